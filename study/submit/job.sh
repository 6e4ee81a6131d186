#!/bin/bash
# {{name}}: `python -m study.run` on a Ray cluster made of this job's nodes. Written by `python -m study.submit`;
# plain bash: edit it as you need, and `sbatch {{path}}` submits it again.
{{sbatch_lines}}

# After the time limit's warning the script requeues the job, at most this often; the next allocation resumes.
MAX_REQUEUES={{max_requeues}}
# The warning may come at any moment, also before the study starts; scancel sends TERM to every process of the job.
stopped_by="" driver="" traps=0
trap 'stopped_by="the time limit"; traps=$((traps + 1)); echo "$(date "+%F %T") the time limit is near: stopping the study"
      [ -n "$driver" ] && kill -TERM "$driver"' USR1
trap 'stopped_by="scancel"; traps=$((traps + 1))' TERM

# The environment study.submit ran in; change this line where the nodes see it elsewhere.
{{activate}}

# A Ray cluster of this job's nodes: the head here (the first node), a worker on every other, each at the address
# Slurm reaches it by. A port, a token and a temp folder of this job's own, so that jobs sharing a node never meet.
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(16))')
export RAY_AUTH_TOKEN
node_ip() { getent ahostsv4 "$(scontrol show node "$1" | grep -oP 'NodeAddr=\K\S+')" | awk 'NR == 1 {print $1}'; }
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_ip=$(node_ip "${nodes[0]}")
if [ "${#nodes[@]}" -gt 1 ] && [[ "$head_ip" == 127.* ]]; then
    echo "the head node ${nodes[0]} resolves to $head_ip, which other nodes cannot reach: set head_ip in this script"
    exit 1
fi
port=$((20000 + SLURM_JOB_ID % 40000))
ray_log={{folder}}/{{name}}-"$SLURM_JOB_ID".ray.log  # Ray's own output, apart from the study's
ray_tmp=/tmp/ray-"$SLURM_JOB_ID"  # not /tmp/ray, which another user's Ray may own, and where ray.init() looks
ray start --head --block --node-ip-address="$head_ip" --port="$port" --num-cpus="$SLURM_CPUS_ON_NODE" \
    --num-gpus={{gpus_per_node}} --temp-dir="$ray_tmp" --include-dashboard=false --disable-usage-stats \
    >> "$ray_log" 2>&1 &
ray_head=$!  # --block keeps Ray's processes children of this script, which the job's end stops
for _ in $(seq 120); do  # until the head listens, two minutes at most
    (exec 3<>"/dev/tcp/$head_ip/$port") 2>/dev/null && break
    kill -0 $ray_head 2>/dev/null || { echo "ray start failed: see $ray_log"; exit 1; }
    sleep 1
done
for node in "${nodes[@]:1}"; do  # each worker counts its own node's CPUs
    srun --nodes=1 --ntasks=1 --nodelist="$node" --cpus-per-task="$SLURM_CPUS_PER_TASK"{{srun_gres}} bash -c \
        "exec ray start --block --address=$head_ip:$port --node-ip-address=$(node_ip "$node") \
         --num-cpus=\$SLURM_CPUS_ON_NODE --num-gpus={{gpus_per_node}} --temp-dir=$ray_tmp --disable-usage-stats" \
        >> "$ray_log" 2>&1 &
done
echo "$(date "+%F %T") job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}: Ray on ${#nodes[@]} node(s), head $head_ip:$port"

# The study. The same command resumes it: from its trials' last checkpoints, each trial in its own MLflow run.
code={{interrupted}}
if [ -z "$stopped_by" ]; then
    python -m study.run {{study}}{{profile_option}} --address "$head_ip:$port" --wait-for-nodes "${#nodes[@]}" \
        --storage {{storage}} --tracking-uri {{tracking_uri}} &
    driver=$!
    [ -n "$stopped_by" ] && kill -TERM "$driver"
    while :; do  # a trap cuts `wait` short (status > 128) while the driver runs on: wait again
        before=$traps
        wait "$driver"; status=$?
        [ "$status" = 127 ] && break  # collected already: its status is in code
        code=$status
        [ "$traps" = "$before" ] && break
    done
fi
kill $ray_head 2>/dev/null

# Stopped after the time limit's warning, it requeues, whatever the driver's status says of the stop (130: stopped
# as asked; 143 or 15: by SIGTERM before study.run could catch it), unless it finished (0), was given a mistake
# (2) or had trials fail (1).
restarts=${SLURM_RESTART_COUNT:-0}
if [ "$code" = {{finished}} ]; then
    echo "$(date "+%F %T") the study is finished (job $SLURM_JOB_ID, restart $restarts)"
elif [ "$stopped_by" = "the time limit" ] && [ "$code" != 1 ] && [ "$code" != 2 ] && [ "$restarts" -lt "$MAX_REQUEUES" ]; then
    echo "$(date "+%F %T") requeued (restart $((restarts + 1)) of at most $MAX_REQUEUES): the next allocation resumes the study"
    scontrol requeue "$SLURM_JOB_ID"
elif [ "$stopped_by" = "the time limit" ] && [ "$code" != 1 ] && [ "$code" != 2 ]; then
    echo "$(date "+%F %T") not requeued: requeued $MAX_REQUEUES times already (MAX_REQUEUES); sbatch resumes it"
    exit 1
else
    echo "$(date "+%F %T") not requeued: study.run exited with $code${stopped_by:+ (stopped by $stopped_by)}"
    exit "$code"
fi
