"""Configuration dataclasses (no torch import: the CLIs build their options from these)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import VaeganError

TEST_SUBSET = 2_000  # the first 2,000 test images: the adversarial test set (see data.py)


def resolve_device(name: str):
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``torch.device``; anything else, or CUDA where torch sees none, is a
    one-line VaeganError (torch is imported here, not at module level: the CLIs read this module to build options)."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise VaeganError(f"unknown device {name!r} (expected cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise VaeganError(f"device {name!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VaeganError(f"device {name!r}: torch sees no CUDA device (torch {torch.__version__})")
    return dev


def check_eps(eps: float) -> float:
    """An L-inf budget in pixel units: pixels are in [0, 1], so eps must be too (a one-line VaeganError)."""
    if not 0.0 <= eps <= 1.0:
        raise VaeganError(f"eps {eps:g} out of range: pixels are in [0, 1], eps must be in [0, 1]")
    return eps


@dataclass
class VAEGANArgs:
    latent_dim: int = 48
    width: int = 24
    negative_slope: float = 0.2
    encoder_width: int | None = None  # E's width when it differs from D's (``widen``); None: width
    decoder_width: int | None = None  # G's width when it differs from D's (``widen``); None: width


@dataclass
class ClassifierArgs:
    width_div: int = 4
    num_classes: int | None = None  # the image contract's class count (checked against it when given)
    fc_width: int = 256


@dataclass
class ClassifierConfig:
    out: str = "runs/classifier"
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0
    train_limit: int | None = None  # use the first N training images (tests, smoke runs)
    eval_limit: int = TEST_SUBSET
    data_root: str | None = None
    dataset: str = "fashion-mnist"   # fashion-mnist, mnist, cifar10, svhn, or a folder PATH (train/<class>/*, test/...)
    image_size: int | None = None    # resize every image to S x S (default: the data set's own size)
    channels: int | None = None      # convert to 1 (grayscale) or 3 (RGB) channels (default: the data set's own)
    download: bool = False           # let torchvision download a missing data set
    device: str = "cpu"              # torch device: cpu, cuda, cuda:N (random draws stay on the CPU generator)
    init: str | None = None        # start from this classifier checkpoint's weights (fine-tuning)
    purifier: str | None = None    # VAE-GAN checkpoint: train on its reconstructions too (see trainer.py)
    purifier_prob: float = 0.5     # fraction of each batch replaced by G(mu_E(x~)), x~ = x with sign noise
    adversarial: str = "none"      # adversarial training: "none", "pgd" (Madry et al. 2018), "trades" (Zhang et al.
                                   # 2019); trainer.ADVERSARIAL
    eps: float = 0.1               # L-inf budget of the training attack (and of the per-epoch PGD check)
    adv_steps: int = 7             # PGD / TRADES inner steps
    adv_alpha: float | None = None  # inner step size; None: 2.5 * eps / adv_steps
    trades_beta: float = 6.0       # TRADES weight of KL(f(x) || f(x_adv))
    eps_ramp_epochs: float = 0.0   # ramp the training eps linearly from 0 over the first N epochs (per step)
    adv_eval_limit: int = 500      # the per-epoch PGD-10 check runs on the first N eval images
    model: ClassifierArgs = field(default_factory=ClassifierArgs)


@dataclass
class VAEGANConfig:
    out: str = "runs/vaegan"
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-4
    lr_d: float = 3e-4
    lr_decay_epochs: int = 0       # the last N epochs decay both learning rates linearly (per step) to 10%
    kl_weight: float = 0.5
    fm_weight: float = 1.0
    adv_weight: float = 1.0
    denoise_prob: float = 0.75
    denoise_eps: float = 0.35
    seed: int = 0
    train_limit: int | None = None
    eval_limit: int = TEST_SUBSET
    data_root: str | None = None
    dataset: str = "fashion-mnist"   # fashion-mnist, mnist, cifar10, svhn, or a folder PATH (train/<class>/*, test/...)
    image_size: int | None = None    # resize every image to S x S (default: the data set's own size)
    channels: int | None = None      # convert to 1 (grayscale) or 3 (RGB) channels (default: the data set's own)
    download: bool = False           # let torchvision download a missing data set
    device: str = "cpu"              # torch device: cpu, cuda, cuda:N (random draws stay on the CPU generator)
    classifier: str | None = None  # if given, report the classifier's accuracy on reconstructions each epoch
    model: VAEGANArgs = field(default_factory=VAEGANArgs)


@dataclass
class PurifierConfig:
    """Fine-tuning a trained VAE-GAN into the purifier of one classifier (``vaegan-train purifier``; trainer.py).

    Each batch is split into four groups that E must map back to the clean image: clean, sign noise (as in the
    VAE-GAN's denoising term), oblivious adversarial examples (FGSM with random start against the classifier alone)
    and adaptive ones (PGD through classifier(G(mu_E(.))), the defended pipeline at T = 0). The loss adds the
    classifier's cross-entropy on G(mu_E(x~)) (``guide_weight``, the classifier stays frozen) to the VAE-GAN terms.
    """

    out: str = "runs/purifier"
    init: str | None = None          # VAE-GAN checkpoint to start from (default: the shipped models/vaegan.pt)
    classifier: str | None = None    # the frozen classifier to purify for (default: the shipped models/classifier.pt)
    epochs: int = 4
    batch_size: int = 128
    lr: float = 5e-4
    lr_d: float = 1e-4
    lr_decay_epochs: int = 1
    guide_weight: float = 50.0       # classifier cross-entropy on G(mu_E(x~)), per image (pixel BCE is a sum)
    guide_loss: str = "ce"           # the guide term: "ce" (true labels), "logits" (HGD's logit-guided L1 to
                                     # classifier(x), Liao et al. 2018), "ce+logits" (their sum); trainer.GUIDE_LOSSES
    kl_weight: float = 0.5
    fm_weight: float = 1.0
    adv_weight: float = 1.0
    noise_frac: float = 0.1          # batch fractions of the four groups (clean takes the rest)
    oblivious_frac: float = 0.2
    adaptive_frac: float = 0.5
    noise_eps: float = 0.35          # sign-noise amplitude ~ U(0, noise_eps)
    oblivious_eps: float = 0.35      # FGSM-RS against the classifier, eps ~ U(0, oblivious_eps)
    adaptive_eps: float = 0.15       # PGD through classifier(G(mu_E(.))), eps ~ U(0, adaptive_eps)
    adaptive_steps: int = 3
    encoder_width: int | None = None  # widen the init's E to this width first (function-preserving); None: as is
    decoder_width: int | None = None  # widen the init's G to this width first (function-preserving); None: as is
    purify_steps: int | None = None  # the operating point written into the checkpoint (key "purify"); None: the
    purify_eta: float | None = None  # init checkpoint's, else PurifyConfig's defaults
    purify_lam: float | None = None
    seed: int = 0
    train_limit: int | None = None
    eval_limit: int = TEST_SUBSET
    data_root: str | None = None
    dataset: str = "fashion-mnist"   # fashion-mnist, mnist, cifar10, svhn, or a folder PATH (train/<class>/*, test/...)
    image_size: int | None = None    # resize every image to S x S (default: the data set's own size)
    channels: int | None = None      # convert to 1 (grayscale) or 3 (RGB) channels (default: the data set's own)
    download: bool = False           # let torchvision download a missing data set
    device: str = "cpu"              # torch device: cpu, cuda, cuda:N (random draws stay on the CPU generator)


@dataclass
class PurifyConfig:
    """Parameters of the purification loop (see ``vaegan.train.purifier``). A purifier checkpoint carries its own
    operating point (key ``purify``; ``checkpoint.purify_config``), which eval, the adaptive attacks and export use;
    these defaults serve new training (the shipped operating point, chosen by the sweep in docs/training.md, "The
    operating point")."""

    mode: str = "latent"      # "latent": descend on z; "pixel": descend on x itself
    init: str = "encoder"     # "encoder": z0 = mu_E(x); "random": z0 ~ N(0, I) (Defense-GAN)
    steps: int = 3            # T
    eta: float = 0.005        # step size
    lam: float = 10.0         # weight of the discriminator term -log sigmoid(D(.))
    momentum: float = 0.0     # heavy-ball momentum (0 = plain gradient descent)
    restarts: int = 1         # R; restart 0 starts at the seed itself, the others at seed + noise * N(0, I)
    noise: float = 0.5        # std of the restart noise (for init="random": std of z0)
    seed: int = 0             # seeds the restart noise
