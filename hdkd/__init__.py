"""HDKD: hybrid data-efficient knowledge distillation for medical image classification."""
