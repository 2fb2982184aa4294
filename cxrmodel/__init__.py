"""The paper's method in pure PyTorch: DenseIBN-121, heads, discriminators, losses, temporal
ensemble, schedules, metrics and one training step. No Ray, no MLflow."""

from cxrmodel.backbone import IBN, WeightsError, densenet121_ibn_a
from cxrmodel.inference import predict_probs
from cxrmodel.losses import adversarial_loss, ensemble_loss, finding_weights, partial_label_bce
from cxrmodel.metrics import AucReport, auc_report
from cxrmodel.network import CXRNet, NetOutput
from cxrmodel.schedules import H_SCHEDULES, HSchedule, make_optimizers
from cxrmodel.temporal_ensemble import TemporalEnsemble
from cxrmodel.training_step import StepOutput, TrainingStep

__all__ = [
    "IBN", "WeightsError", "densenet121_ibn_a", "predict_probs", "adversarial_loss", "ensemble_loss",
    "finding_weights", "partial_label_bce", "AucReport", "auc_report", "CXRNet", "NetOutput",
    "H_SCHEDULES", "HSchedule", "make_optimizers", "TemporalEnsemble", "StepOutput", "TrainingStep",
]
