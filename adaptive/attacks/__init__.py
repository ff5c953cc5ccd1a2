"""One module per attack family (torchattacks' layout); ``vaegan.adaptive.registry`` names each attack's runner.

- ``pgd``      the shared PGD engine (``TrackedPGD``, ``pgd_over``)
- ``eot``      the randomized purifier that the EOT attacks average over
- ``bpda``     BPDA and BPDA + EOT (Athalye et al. 2018)
- ``full``     PGD with the exact gradient through the unrolled purifier, and its EOT variant
- ``apgd``     APGD-CE then APGD-T (Croce & Hein 2020)
- ``fab``      FAB-T (Croce & Hein 2020)
- ``square``   Square (Andriushchenko et al. 2020) on the deployed runtime, scores only
- ``transfer`` PGD on an independently trained surrogate classifier
- ``latent``   PGD on the encoder's latent code
"""
