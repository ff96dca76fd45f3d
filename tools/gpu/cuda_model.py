"""The GPU probes' common start: a training script imported from its file (any version's copy), and its model on
CUDA as its training sets it up (mixers prepared, attention backend chosen, embedding in bf16), with the setup's
log lines printed."""
import importlib.util
import sys

import torch


def load_script_file(path, name: str):
    """The training script at `path` imported as module `name` (registered in sys.modules: torch.compile resolves
    the module's globals through it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def training_model_on_cuda(mod, seed: int = 0):
    """(args, model) of the imported script `mod`, on the current CUDA device. MLP_RECOMPUTE=auto stays unresolved
    (off): training resolves it from the micro-batch size, which the probes choose themselves; set it to 0 or 1."""
    args, dev = mod.Hyperparameters(), torch.device("cuda")
    for line in mod.prepare_mixers(args, dev) + [mod.configure_attention(args, dev)]:
        print(line)
    torch.manual_seed(seed)
    model = mod.GPT(args).to(dev)
    model.tok_emb.to(torch.bfloat16)  # as training does on CUDA
    return args, model
