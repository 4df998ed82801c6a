"""pysodmetrics' defaults as its README runs them (uint8 map and uint8 mask into each metric's
step(), normalize=True): the independent reference for eval-seg's `sod-toolkit` protocol."""
from __future__ import annotations

import warnings

import numpy as np

TOOLKIT_KEYS = ("max_f", "mean_f", "adaptive_f", "weighted_f", "s_measure", "mae", "e_max", "e_mean", "e_adaptive")


def pysodmetrics_defaults(pairs) -> dict:
    """Scalars under eval-seg's names, plus curves ascending in threshold and per-image E."""
    import py_sod_metrics as psm

    with warnings.catch_warnings():  # Fmeasure's deprecation note; NaN warnings of empty quadrants
        warnings.simplefilter("ignore")
        fm, wfm, sm, em, mae = psm.Fmeasure(), psm.WeightedFmeasure(), psm.Smeasure(), psm.Emeasure(), psm.MAE()
        for v, gt in pairs:
            for m in (fm, wfm, sm, em, mae):
                m.step(pred=v, gt=gt)
    f, e = fm.get_results()["fm"], em.get_results()["em"]
    return {"max_f": f["curve"].max(), "mean_f": f["curve"].mean(), "adaptive_f": f["adp"],
            "weighted_f": wfm.get_results()["wfm"], "s_measure": sm.get_results()["sm"],
            "mae": mae.get_results()["mae"], "e_max": e["curve"].max(), "e_mean": e["curve"].mean(),
            "e_adaptive": e["adp"], "f_curve": np.flip(f["curve"]), "e_curve": np.flip(e["curve"]),
            "precision_curve": np.flip(fm.get_results()["pr"]["p"]),
            "e_curves": np.flip(np.array(em.changeable_ems), axis=1), "e_adaptives": np.array(em.adaptive_ems)}
