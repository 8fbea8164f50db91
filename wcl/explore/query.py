"""Search by example for ``python -m wcl.explore --query``: the query image embedded by the checkpoint and
transform that wrote the rows, once that checkpoint is checked to hold the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wcl.errors import DataError
from wcl.explore.clusters import normalized
from wcl.explore.files import Embeddings


def query_image(image: str | Path):
    """The query as an RGB image, or one line saying why it cannot be one."""
    from PIL import UnidentifiedImageError

    from wcl.data.datasets import rgb_loader

    p = Path(image).expanduser()
    if not p.is_file():
        raise DataError(f"the query image {p} does not exist.")
    try:
        return rgb_loader(str(p))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"the query {p} is not an image PIL can read ({err}); pass a .jpg or .png file.") from err


def query_checkpoint(emb: Embeddings) -> str:
    """The checkpoint that wrote ``emb``, checked to hold the same weights now (its SHA-256, size and time are in
    embedding.json): a query embedded by other weights than the rows would be compared with nothing it matches."""
    from wcl.files import describe_file, file_identity

    ckpt, tf = emb.meta.get("checkpoint"), emb.meta.get("transform")
    if not ckpt or not tf:
        raise DataError(f"{emb.folder / 'embedding.json'} does not record the checkpoint and transform, so a query "
                        "cannot be embedded like the rows; write the embeddings again with `python -m wcl predict`.")
    if not Path(ckpt).is_file():
        raise DataError(f"the checkpoint that wrote {emb.folder}, {ckpt}, is gone; a query must be embedded by the "
                        "same weights as the rows: restore it, or write the embeddings again with `python -m wcl "
                        "predict`.")
    then = emb.meta.get("checkpoint_file")
    if then:
        now = file_identity(ckpt, known=then)
        if now["sha256"] != then.get("sha256"):
            raise DataError(f"the checkpoint changed since predict wrote {emb.folder}: then "
                            f"{describe_file(ckpt, then)}, now {describe_file(ckpt, now)}; a query embedded by the "
                            "new weights would not match the rows. Write the embeddings again with `python -m wcl "
                            "predict`, or restore that checkpoint.")
    return ckpt


def embed_query(emb: Embeddings, image: str | Path) -> np.ndarray:
    """The query image's row (1×D, unit length), embedded by the checkpoint and transform recorded in
    embedding.json; one line where its width differs from the rows'."""
    from wcl.data.augment import Augmentations, eval_transform
    from wcl.eval.checkpoint import load_backbone

    img = query_image(image)
    ckpt, tf = query_checkpoint(emb), emb.meta["transform"]
    backbone, _ = load_backbone(ckpt)
    aug = Augmentations(crop_size=tf["crop_size"], mean=tuple(tf["mean"]), std=tuple(tf["std"]))
    with torch.no_grad():
        q = backbone.eval()(eval_transform(aug, tf["resize"])(img)[None]).float().numpy()
    if q.shape[1] != emb.x.shape[1]:
        raise DataError(f"{ckpt} gives {q.shape[1]}-dim features but {emb.folder} holds {emb.x.shape[1]}-dim rows; "
                        "embedding.json names another checkpoint than the one that wrote them. Write the embeddings "
                        "again with `python -m wcl predict`.")
    return normalized(q)
