"""The GPU probes' common start: a training script's model on CUDA as its training sets it up (mixers prepared,
attention backend chosen, embedding in bf16), with the setup's log lines printed."""
import torch


def training_model_on_cuda(mod, seed: int = 0):
    """(args, model) of the imported script `mod`, on the current CUDA device."""
    args, dev = mod.Hyperparameters(), torch.device("cuda")
    for line in mod.prepare_mixers(args, dev) + [mod.configure_attention(args, dev)]:
        print(line)
    torch.manual_seed(seed)
    model = mod.GPT(args).to(dev)
    model.tok_emb.to(torch.bfloat16)  # as training does on CUDA
    return args, model
