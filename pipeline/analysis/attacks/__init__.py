"""Privacy attacks on a finished run: gradient inversion and membership inference.

Two attacks test what the privacy mechanisms claim, measured rather than assumed:

* **Gradient inversion** ("Inverting Gradients", Geiping et al., NeurIPS 2020): an honest-but-
  curious server optimises dummy images so that their gradient matches the one a hospital revealed
  (cosine-similarity loss over all parameter gradients plus a total-variation prior, Adam on the
  images with signed gradients, images kept inside the valid intensity range, labels assumed
  known as in the paper). It is run against one hospital's single local step on a small batch,
  at the public initial weights (round 1, where the attack is strongest), in four settings:

  - ``plaintext``: no DP, no encryption: the server receives the float32 update
    ``(n_k / n_ref) * (w_local - w_global)``; for one SGD step this is a known scale of the
    batch gradient, which the attacker divides back out.
  - ``dp``: DP-SGD as in Opacus's ``DPOptimizer``: each per-sample gradient clipped to
    ``max_grad_norm``, summed, plus Gaussian noise of std ``noise_multiplier * max_grad_norm``,
    divided by the batch size; the noise multiplier is the one the run's DP plan derives.
  - ``encrypted``: the CKKS ciphertext chunks the server actually receives
    (:class:`pipeline.secagg.codec.CkksCodec`). The server holds the parameters-only context; decrypting
    is attempted and the failure recorded. There is no gradient to invert, so no reconstruction
    is made and its SSIM/PSNR are reported as null, with the reason.
  - ``collusion``: the server plus one hospital, which holds the shared CKKS key: the victim's
    real masked reply (the real protocol and codec) decrypted, the one mask the colluder knows
    removed, the rest read as the update and inverted (:mod:`.collusion`). Its yardstick is the
    ``no_information_baseline``: the same attack on a uniformly random update (what a reply whose
    masks nobody can remove decodes to); a TV-smoothed blob scores a little above random images.

  Reconstructions are scored against the true images by SSIM and PSNR (MONAI's metrics, images
  mapped to [0, 1]), after matching reconstructions to true images of the same label; a random-
  image baseline (the attack's own starting point) and a mean-image baseline (an attacker who only
  knows what an average image looks like) put the numbers in context.

* **Membership inference** against the final global model: the loss-threshold attack (Yeom et al.,
  CSF 2018): score = -loss, members = the attacked hospital's training images, non-members = the
  test split (balanced, seeded subsample). Reported as ROC-AUC (0.5: the attacker learns nothing),
  the largest TPR - FPR (Yeom's membership advantage) and the TPR at 1% FPR (Carlini et al., S&P
  2022, argue for low-FPR reporting; their likelihood-ratio attack, LiRA, needs shadow models and
  is not implemented here).

``python scripts/attack.py RUN_DIR`` (or ``fedmed-attack RUN_DIR``) runs both on a run folder and
writes ``RUN_DIR/attack/report.json``, ``report.md`` and ``inversion_grid.png``.


The package owns attacking a finished run folder; it reads the run's files and rebuilds its model,
data shares, DP plan and codec from the task, privacy and secagg code, and must not import the
engines (:mod:`pipeline.engines`) or the Flower apps (:mod:`pipeline.flower`). Its modules, each
importing only those above it:

* :mod:`.gradients`: the gradient a hospital reveals (plain, DP-SGD) and update <-> gradient.
* :mod:`.inversion`: the inversion attack (cosine gradient loss, total variation, Adam).
* :mod:`.images`: [0, 1] intensities, SSIM / PSNR, matching reconstructions to true images.
* :mod:`.encrypted`: what the server sees of a CKKS-encrypted update (:class:`EncryptedView`).
* :mod:`.collusion`: what the server and one colluding hospital read of another's reply.
* :mod:`.membership`: per-sample losses, ROC, the loss-threshold attack.
* :mod:`.run`: options, reading the run folder, :func:`attack_run`.
* :mod:`.report`: report.json / report.md / inversion_grid.png.
* :mod:`.cli`: :func:`parse_args` and :func:`main`.
"""

from pipeline.analysis.attacks.cli import main, parse_args
from pipeline.analysis.attacks.collusion import colluder_estimate, no_information_estimate
from pipeline.analysis.attacks.encrypted import EncryptedView, encrypted_view
from pipeline.analysis.attacks.gradients import (
    batch_gradient,
    dp_step_gradient,
    gradient_from_update,
    observed_gradient,
    per_sample_gradients,
    trainable_params,
    update_from_gradient,
)
from pipeline.analysis.attacks.images import image_scores, match_to_truth, psnr, ssim, to_unit
from pipeline.analysis.attacks.inversion import cosine_gradient_loss, invert_gradients, random_images, total_variation
from pipeline.analysis.attacks.membership import loss_threshold_attack, per_sample_loss, roc_auc, roc_points
from pipeline.analysis.attacks.report import (
    ATTACK_DIR,
    GRID_PNG,
    REPORT_JSON,
    REPORT_MD,
    report_markdown,
    save_grid,
    write_report,
)
from pipeline.analysis.attacks.run import (
    DEFAULT_DP_EPSILON,
    AttackError,
    AttackOptions,
    attack_dp_plan,
    attack_run,
    load_run_config,
    pick_batch,
    run_epsilon,
)

__all__ = [
    "ATTACK_DIR",
    "DEFAULT_DP_EPSILON",
    "GRID_PNG",
    "REPORT_JSON",
    "REPORT_MD",
    "AttackError",
    "AttackOptions",
    "EncryptedView",
    "attack_dp_plan",
    "attack_run",
    "batch_gradient",
    "cosine_gradient_loss",
    "dp_step_gradient",
    "encrypted_view",
    "gradient_from_update",
    "image_scores",
    "invert_gradients",
    "load_run_config",
    "loss_threshold_attack",
    "colluder_estimate",
    "no_information_estimate",
    "main",
    "match_to_truth",
    "observed_gradient",
    "parse_args",
    "per_sample_gradients",
    "per_sample_loss",
    "pick_batch",
    "psnr",
    "random_images",
    "report_markdown",
    "roc_auc",
    "roc_points",
    "run_epsilon",
    "save_grid",
    "ssim",
    "to_unit",
    "total_variation",
    "trainable_params",
    "update_from_gradient",
    "write_report",
]
