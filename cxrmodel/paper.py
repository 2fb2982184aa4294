"""The paper's settings (Luo et al., §IV-A), in one place. The config's defaults and `MethodSpec`'s
(the GPU scripts build the method from a spec alone, where the config's pydantic is not installed)
both read them from here. Pure Python: it loads without torch."""

LAMBDA_TAT = 0.03  # eq. 7's λ_tat
LAMBDA_UTE = 30.0  # eq. 7's λ_ute (= w_max of Laine & Aila's temporal ensembling, the paper's [22])
GAMMA = 0.9  # eq. 4's momentum of the temporal ensemble
ALPHA_COMMON = 3.0  # eq. 1's α_c for the common findings; every other finding has α_c = 1
# UTE's threshold H "gradually decreases" (§III-C) without stated values: ours fall from 0.4 to 0.1.
H_START, H_END = 0.4, 0.1
# Adam 1e-4, decayed x0.1 after epochs 3 and 6, for 8 epochs; RMSprop 1e-4 fixed for the discriminators.
LR, LR_MILESTONES, LR_DECAY, DISCRIMINATOR_LR = 1e-4, (3, 6), 0.1, 1e-4
EPOCHS = 8
IMAGE_SIZE = 320  # "CXR images with a size of 320x320 as the input"
