"""Evaluation: `evaluate` (a workdir on its task's eval split), `fewshot` (in-context classification with a
decoder), `baselines` (majority class, TF-IDF + logistic regression, and each task's own), `metrics`
(scikit-learn, sacrebleu and rouge-score behind one small API)."""
