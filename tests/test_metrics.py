from isnm import metrics
from isnm.training import train


def test_names_are_those_in_users_stores():
    # MLflow stores hold these keys: renaming one loses every recorded run's history of it
    assert metrics.PER_EPOCH == ("epoch", "train_loss", "train_acc", "val_acc", "val_spike_rate", "val_synops",
                                 "val_energy", "test_acc", "beta", "alpha", "epoch_seconds", "spike_rate", "synops",
                                 "energy", "energy_ann")
    assert (metrics.LAYER_RATE, metrics.KERNEL, metrics.KERNEL_FALLBACK, metrics.DATA_FINGERPRINT) == \
        ("spike_rate/", "kernel", "kernel_fallback", "data_fingerprint")


def test_an_epoch_reports_every_per_epoch_number_and_each_layers_rate():
    reported = train({"epochs": 1, "timesteps": 2, "batch_size": 256})
    layer_rates = {k for k in reported if k.startswith(metrics.LAYER_RATE)}
    assert layer_rates == {metrics.LAYER_RATE + "body.0", metrics.LAYER_RATE + "body.2"}
    assert set(reported) == {*metrics.PER_EPOCH, *layer_rates, metrics.KERNEL, metrics.DATA_FINGERPRINT}
    assert all(isinstance(reported[k], (int, float)) for k in (*metrics.PER_EPOCH, *layer_rates))


def test_validation_metrics_come_only_with_a_validation_split():
    reported = train({"epochs": 1, "timesteps": 2, "batch_size": 256, "validation": 0})
    assert set(metrics.PER_EPOCH) - set(reported) == set(metrics.VALIDATION)
