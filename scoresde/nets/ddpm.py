"""The DDPM U-Net (Ho et al. 2020, App. B) as the reference implementation's ``models/ddpm.py`` builds it.

It is NCSN++'s skeleton with DDPM options (``resblock_type="ddpm"``, no ``skip_rescale``, nearest/strided-conv
resampling without FIR, no progressive paths, the sinusoidal embedding of the label) except for one detail: every
GroupNorm has 32 groups, where NCSN++ uses ``min(C // 4, 32)``. The two agree from 128 channels on (all published
DDPM configs); below that only the group count differs, so this class sets it and keeps everything else, including
the module layout :func:`scoresde.nets.official.official_module_order` maps reference checkpoints onto.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from scoresde.nets.ncsnpp import NCSNpp

GROUPS = 32


class DDPM(NCSNpp):
    """DDPM U-Net ``net(x, label)`` for images ``(C, H, H)``; options as in the reference's ``model.*`` config.

    Every channel count must be a multiple of 32 (GroupNorm with 32 groups). As for NCSN++, the input map for data
    in [0, 1] and the division by the noise level (the reference's SMLD-trained DDPM) belong to the score model.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        conditional: bool = True,
    ):
        bad = sorted(c for c in {nf, *(nf * m for m in ch_mult)} if c % GROUPS)
        if bad:
            raise ValueError(f"DDPM: channel counts {bad} (nf * ch_mult) must be multiples of {GROUPS} (GroupNorms)")
        super().__init__(
            data_shape,
            nf=nf,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions,
            dropout=dropout,
            resamp_with_conv=resamp_with_conv,
            fir=False,
            skip_rescale=False,
            resblock_type="ddpm",
            progressive="none",
            progressive_input="none",
            embedding_type="positional",
            init_scale=0.0,
            conditional=conditional,
        )
        for module in self.modules():
            if isinstance(module, nn.GroupNorm):
                module.num_groups = GROUPS
