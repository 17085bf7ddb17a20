"""The runnable jobs. They own their process, so they may settle one thing about it before anything is imported:

Beam's optional ModelManager module (apache_beam/ml/inference/model_manager.py, used only with RunInference's
use_model_manager=True, which no job here sets) imports torch at the top, 1.8 s on 2 cores (and then scipy, whose
absence Beam catches). Marking it absent makes Beam take that same path at once, so a job whose image graph is
cached starts without torch. The library (transforms/) does not do this: it never changes a user's process.
"""
import sys

sys.modules.setdefault("apache_beam.ml.inference.model_manager", None)
