"""Train from a profile or a config file, on one GPU or several of one host (Accelerate / torchrun, DDP).

    python train.py --profile embedded                                   # one process (= medbot-train)
    python train.py --profile embedded --max-steps 40 --lora-r 16        # any config field, as a flag
    python train.py --config my_run.json                                 # a saved MedbotConfig (or .yaml)
    accelerate launch --num_processes 2 train.py --config my_run.json    # 2 GPUs, QLoRA + DDP
    torchrun --nproc_per_node 4 train.py --config my_run.json            # the same through torchrun

The notebook's stages, called in the notebook's order (`medbot_train.main`), writing the same
files. Under N processes each process loads its own 4-bit copy of the base on its own GPU and
trains the same LoRA weights (the HF Trainer wraps the model in DistributedDataParallel); the
effective batch - batch_size x grad_accum on one GPU - is kept by sharing its rows out over the
N processes (`medbot_train.per_process`), so max_steps, the learning-rate schedule and the
samples per step are those of the single-GPU run. Rank 0 alone writes checkpoints,
logs/metrics.jsonl, the plots, TensorBoard and the adapter.
"""

from medbot_train import main

if __name__ == "__main__":
    main()
