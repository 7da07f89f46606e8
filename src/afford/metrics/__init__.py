"""Evaluation metrics: the exact WSAG saliency protocol (KLD/SIM/NSS) and its aggregation."""

from afford.metrics.report import MetricAccumulator, format_table
from afford.metrics.saliency import (
    PROTOCOLS,
    kld,
    nss,
    prepare_gt,
    prepare_prediction,
    protocol_info,
    resize_bilinear,
    score,
    sim,
)

__all__ = [
    "PROTOCOLS",
    "MetricAccumulator",
    "format_table",
    "kld",
    "nss",
    "prepare_gt",
    "prepare_prediction",
    "protocol_info",
    "resize_bilinear",
    "score",
    "sim",
]
