"""channels_last on the shipped shapes student (bf16, one thread, CPU-time clock): UNet at batch 100 and decoder at
batch 50, default layout against channels_last, round-robin, 5 rounds after 1 warm-up.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/channels_last_shapes.py
"""

import time, statistics, torch, copy
from pocketdiff.sampling.pipeline import load_pipeline
torch.set_num_threads(1)
p = load_pipeline("models/shapes", unet_dir="models/shapes/unet_s8", dtype="bf16")
u = p.unet; ucl = copy.deepcopy(u).to(memory_format=torch.channels_last)
v = p.vae; vcl = copy.deepcopy(v).to(memory_format=torch.channels_last)
B = 100
x = torch.randn(B, u.config.in_channels, u.config.sample_size, u.config.sample_size, dtype=torch.bfloat16)
ctx = p.encode(["a red circle"] * B).to(torch.bfloat16)
z = torch.randn(B // 2, 4, u.config.sample_size, u.config.sample_size, dtype=torch.bfloat16)
f = {"unet": lambda: u(x, 500, encoder_hidden_states=ctx), "unet-cl": lambda: ucl(x.contiguous(memory_format=torch.channels_last), 500, encoder_hidden_states=ctx),
     "dec": lambda: v.decode(z), "dec-cl": lambda: vcl.decode(z.contiguous(memory_format=torch.channels_last))}
t = {k: [] for k in f}
with torch.inference_mode():
    for r in range(6):
        for k, fn in f.items():
            t0 = time.process_time(); fn(); dt = time.process_time() - t0
            if r: t[k].append(dt * 1e3)
for k, v_ in t.items(): print(k, round(statistics.median(v_), 1), [round(a) for a in v_])
