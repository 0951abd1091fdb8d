"""The pipeline's components: one Python function per step, each a single call into pipelines_kfp/steps.py.

KFP embeds each function's source in the pipeline (the source is what runs, in the Distillery image that
`make_components(image)` names), so the functions are self-contained: their own imports, typed artifacts
in and out (`Dataset` for soft-label records, `Model` for .keras and .tflite files, `Metrics`, `Markdown`).
`install_kfp_package=False`: the image has the kfp SDK already (setup.py), and nothing is installed at run
time, so the steps run offline. No `from __future__ import annotations` here: KFP reads the annotations.

    python -c "from pipelines_kfp import components; print(sorted(components.make_components('REGISTRY/distillery:0.1.0-cpu')))"
"""


from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def split_data(recipe: str, runlocal: bool, idx_dir: str, data: Output[Dataset]):
    """The demo recipe's Fashion-MNIST split (labelled / unlabeled / test TFRecords)."""
    from pipelines_kfp import steps

    steps.split_data(recipe, runlocal, idx_dir, data)


def train_teacher(recipe: str, runlocal: bool, data: Input[Dataset], teacher: Output[Model]):
    """The demo recipe's teacher, trained on the labelled part."""
    from pipelines_kfp import steps

    steps.train_teacher(recipe, runlocal, data, teacher)


def extract(recipe: str, runlocal: bool, part: str, beam_options: str, records: Output[Dataset],
            data: Input[Dataset] = None, teacher: Input[Model] = None):
    """One data part's soft labels (distillery-extract's Beam job on the runner of `beam_options`)."""
    from pipelines_kfp import steps

    steps.extract(recipe, runlocal, part, beam_options, records, data, teacher)


def train(recipe: str, runlocal: bool, student: str, training: str, namespace: str, overlay: str, train_image: str,
          timeout_s: int, labelled: Input[Dataset], evaluation: Input[Dataset], model: Output[Model],
          metrics: Output[Metrics], unlabeled: Input[Dataset] = None):
    """One student (distillery-train), in this step or as a JobSet / TFJob on the cluster."""
    from pipelines_kfp import steps

    records = steps.records_by_part(labelled, unlabeled, evaluation)
    steps.train(recipe, runlocal, student, records, model, metrics, training, namespace, overlay, train_image,
                timeout_s)


def quantize(recipe: str, runlocal: bool, name: str, mode: str, model: Input[Model], labelled: Input[Dataset],
             tflite: Output[Model]):
    """One conversion to TFLite (distillery-quantize)."""
    from pipelines_kfp import steps

    steps.quantize(recipe, runlocal, name, mode, model, labelled, tflite)


def choose_best(recipe: str, runlocal: bool, students: Input[list[Model]], best: Output[Model]) -> str:
    """The student with the best top-1, as a Model of its own; returns its name."""
    from pipelines_kfp import steps

    return steps.choose_best(recipe, runlocal, students, best)


def factorize(recipe: str, runlocal: bool, best: Input[Model], labelled: Input[Dataset], evaluation: Input[Dataset],
              factorized: Output[Model], unlabeled: Input[Dataset] = None):
    """The best student factorized and fine-tuned (distillery-factorize)."""
    from pipelines_kfp import steps

    steps.factorize(recipe, runlocal, best, steps.records_by_part(labelled, unlabeled, evaluation), factorized)


def benchmark(recipe: str, runlocal: bool, best: str, students: Input[list[Model]], factorized: Input[Model],
              reference: Input[Model], evaluation: Input[Dataset], report: Output[Artifact],
              report_markdown: Output[Markdown], metrics: Output[Metrics]):
    """Every converted model's top-1, latency and LPIRC score (distillery-benchmark)."""
    from pipelines_kfp import steps

    steps.benchmark(recipe, runlocal, best, [*students, factorized, reference], evaluation, report, report_markdown,
                    metrics)


def gate(max_int8_drop: float, latency_budget_ms: float, report: Input[Artifact], candidate: Input[Model],
         reference: Input[Model], blessed: Output[Model], verdict: Output[Markdown]):
    """Blesses the int8 model (metadata blessed: true and the numbers), or fails the run naming the reason."""
    from pipelines_kfp import steps

    steps.gate(report, candidate, reference, max_int8_drop, latency_budget_ms, blessed, verdict)


STEPS = (split_data, train_teacher, extract, train, quantize, choose_best, factorize, benchmark, gate)


def make_components(image: str) -> dict:
    """{step name: its KFP component}, every one running in `image` (the Distillery image)."""
    return {step.__name__: dsl.component(step, base_image=image, install_kfp_package=False) for step in STEPS}
