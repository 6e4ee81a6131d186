"""The names of what a training run reports: every epoch's metrics (`isnm.training.train`) and a test pass's
activity (`isnm.activity`).

They are keys in users' MLflow stores, so a name's text never changes; a new metric gets a new name.
"""

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_ACC = "val_acc"
VAL_SPIKE_RATE = "val_spike_rate"
VAL_SYNOPS = "val_synops"  # per image, on the validation pass: what a search may select on (never the test pass)
VAL_ENERGY = "val_energy"  # microjoules per image, on the validation pass
TEST_ACC = "test_acc"
BETA = "beta"  # the surrogate's: with per-step updates, the epoch's last step's
ALPHA = "alpha"
EPOCH_SECONDS = "epoch_seconds"
SPIKE_RATE = "spike_rate"  # spikes per neuron per time step, over every spiking layer
SYNOPS = "synops"  # per image
ENERGY = "energy"  # microjoules per image
ENERGY_ANN = "energy_ann"  # microjoules per image of the same network as an ANN
LAYER_RATE = "spike_rate/"  # + a spiking layer's module name: that layer's firing rate
LAYER_BETA = "beta/"  # + a spiking layer's module name: its learned beta at the epoch's end (schedule learned)

KERNEL = "kernel"  # the ISNM loops that ran: "eager" or "compiled"
KERNEL_FALLBACK = "kernel_fallback"  # only after a compilation failed: why the loops fell back to eager
DATA_FINGERPRINT = "data_fingerprint"  # isnm.data.fingerprint of the data trained and tested on

# The numbers every epoch reports, besides one LAYER_RATE per spiking layer. The VAL_ ones come only with a
# validation split (`validation` > 0, the default).
VALIDATION = (VAL_ACC, VAL_SPIKE_RATE, VAL_SYNOPS, VAL_ENERGY)
PER_EPOCH = (EPOCH, TRAIN_LOSS, TRAIN_ACC, *VALIDATION, TEST_ACC, BETA, ALPHA, EPOCH_SECONDS,
             SPIKE_RATE, SYNOPS, ENERGY, ENERGY_ANN)
