"""One active-learning round as resumable steps (``armbench loop``).

Steps, each recorded in ``<loop>/loop.json`` when it finishes (atomically), so running the
command again skips what is done and goes on where it stopped (a killed analyze or
fine-tune also resumes inside the step, from its store / checkpoint):

1. ``analyze``   ``analysis.engine.run_analysis`` with the current model -> ``<loop>/before/``
                 (labeling picks among the unlabeled split, with pre-annotations)
2. ``export``    the picks for the annotator: ``before/label_picks.coco.json`` (CVAT / COCO
                 with the model's polygons) and ``before/label_picks.label_studio.json``
3. ``annotate``  outside this tool. The round waits until annotated COCO files are given
                 (``annotated``) or, for synthetic data, ``oracle=True`` takes the unlabeled
                 split's own ground truth for the picked images (``<loop>/annotated/oracle.coco.json``)
4. ``merge``     ``analysis.labeling.merge_annotated``: the train file (the dataset's train.json,
                 or ``train``: the previous round's ``train_merged.json``) + the annotated
                 images -> ``<loop>/train_merged.json``
5. ``finetune``  ``training.engine.finetune`` from the current model on the merged file ->
                 ``<loop>/model.onnx`` (+ model card)
6. ``analyze_after``  the same analysis with the new model -> ``<loop>/after/``
7. ``compare``   ``analysis.compare.compare_runs(before, after)`` -> ``compare.json``, ``compare.html``

With ``train`` (a later round: the previous round's ``train_merged.json``) every step runs on
``<loop>/dataset/`` (:func:`round_dataset`): that file as the train split and the unlabeled
split without the images it already holds, so nothing annotated earlier is picked again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from armbench_segmentation.codecs import atomic_write_text, json_default
from armbench_segmentation.errors import ArmbenchError

LOG = logging.getLogger(__name__)
STEPS = ("analyze", "export", "annotate", "merge", "finetune", "analyze_after", "compare")
STATE_FILE = "loop.json"


@dataclass(frozen=True)
class LoopOptions:
    loop_dir: Path
    annotated: tuple[str, ...] = ()
    oracle: bool = False
    epochs: int = 10
    imgsz: int = 640
    batch: int = 8
    device: str = "auto"
    progress: bool = True
    train: str | None = None  # the train COCO the annotations are merged into (default: the dataset's train.json)


class LoopState:
    """``loop.json``: the round's identity (dataset, model) and the finished steps with their outputs."""

    def __init__(self, path: Path, identity: dict[str, Any]):
        self.path = path
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ArmbenchError(f"{path} is not valid JSON ({exc}); move it away to start the round again") from None
            if data.get("identity") != identity:
                raise ArmbenchError(f"{path} belongs to a round with other inputs ({data.get('identity')}); use "
                                    f"another --dir for {identity}, or delete {path.parent} to start again")
            self.data = data
        else:
            self.data = {"version": 1, "identity": identity, "steps": {}}

    def done(self, step: str) -> dict | None:
        return self.data["steps"].get(step)

    def finish(self, step: str, outputs: dict[str, Any]) -> None:
        self.data["steps"][step] = {"finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **outputs}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.data, indent=1, default=json_default))


def run_loop(settings, options: LoopOptions, say: Callable[[str], None] = print) -> dict:
    """Run the round's unfinished steps; returns the state. Stops (returns) at ``annotate``
    while no annotations are given; raises ArmbenchError with the fix for bad input."""
    from armbench_segmentation.analysis.engine import run_analysis

    loop = Path(options.loop_dir)
    loop.mkdir(parents=True, exist_ok=True)
    root = Path(settings.data.path)
    base_train = Path(options.train).resolve() if options.train else root / "train.json"
    identity = {"dataset": str(root.resolve()), "model": str(Path(settings.model.path).resolve()),
                "train": str(base_train)}
    state = LoopState(loop / STATE_FILE, identity)
    if options.train:  # a later round: analyse a view where the earlier rounds' labels are train, not unlabeled
        view = round_dataset(root, base_train, loop / "dataset")
        settings = replace(settings, data=replace(settings.data, path=view))

    def step(name: str, fn: Callable[[], dict | None]) -> bool:
        if state.done(name):
            say(f"[{name}] done earlier ({state.done(name)['finished_utc']})")
            return True
        say(f"[{name}] ...")
        out = fn()
        if out is None:
            return False
        state.finish(name, out)
        return True

    def analyze_before() -> dict:
        res = run_analysis(settings, loop / "before", progress=options.progress, crops=False)
        return {"run": str(res.out_dir), "samples": res.n_samples,
                "picks": list(res.insights.picks.sample_ids) if res.insights and res.insights.picks is not None else []}

    def export() -> dict:
        before = loop / "before"
        files = {k: str(before / f) for k, f in (("coco", "label_picks.coco.json"),
                                                   ("label_studio", "label_picks.label_studio.json"),
                                                   ("csv", "label_picks.csv")) if (before / f).is_file()}
        if "coco" not in files:
            raise ArmbenchError(f"the analysis in {before} wrote no label_picks.coco.json (no unlabeled images?); "
                                "the loop needs unlabeled images to pick from (test.json)")
        say(f"  to annotate: {files['coco']} (CVAT / COCO, with the model's polygons)"
            + (f", {files['label_studio']} (Label Studio)" if "label_studio" in files else ""))
        return {"files": files}

    def annotate() -> dict | None:
        if options.annotated:
            missing = [f for f in options.annotated if not Path(f).is_file()]
            if missing:
                raise ArmbenchError(f"--annotated {missing[0]} does not exist; give the COCO file(s) exported after annotation")
            return {"annotated": [str(Path(f).resolve()) for f in options.annotated], "oracle": False}
        if options.oracle:
            return {"annotated": [str(_oracle_annotations(root, loop))], "oracle": True}
        picks = state.done("export")["files"]["coco"]
        say(f"  waiting for annotations: annotate the images of {picks}, export COCO, then run again with "
            "--annotated FILE [FILE ...] (or --oracle on synthetic data)")
        return None

    def merge() -> dict:
        from armbench_segmentation.analysis.labeling import merge_annotated

        summary = merge_annotated(base_train, state.done("annotate")["annotated"], loop / "train_merged.json",
                                  images_dir=root / "images")
        for line in summary.problems:
            say(f"  merge: {line}")
        if not summary.images_added:
            raise ArmbenchError(f"no annotated image could be merged into {base_train} "
                                f"({len(summary.problems)} problems above); check the annotated files")
        say(f"  merged {summary.images_added} images ({summary.annotations_added} annotations) -> {summary.out}")
        return {"train": str(loop / "train_merged.json"), "summary": summary.as_dict()}

    def finetune() -> dict:
        from armbench_segmentation.training.engine import FinetuneConfig
        from armbench_segmentation.training.engine import finetune as run_finetune

        cfg = FinetuneConfig(train=(state.done("merge")["train"],), images=(str(root / "images"),),
                             base=str(settings.model.path), out=str(loop / "model.onnx"), val=str(root / "val.json"),
                             epochs=options.epochs, imgsz=options.imgsz, batch=options.batch, device=options.device)
        result = run_finetune(cfg)
        return {"model": str(result.out), "card": str(result.card_md), "val": result.card.get("val")}

    def analyze_after() -> dict:
        tuned = replace(settings, model=replace(settings.model, path=Path(state.done("finetune")["model"])))
        res = run_analysis(tuned, loop / "after", progress=options.progress, crops=False)
        return {"run": str(res.out_dir), "samples": res.n_samples}

    def compare() -> dict:
        from armbench_segmentation.analysis.compare import _clean, compare_runs, format_text, write_page

        c = compare_runs(loop / "before", loop / "after")
        atomic_write_text(loop / "compare.json", json.dumps(_clean(c.as_dict()), indent=1))
        write_page(c, loop / "compare.html")
        say(format_text(c))
        return {"json": str(loop / "compare.json"), "page": str(loop / "compare.html")}

    for name, fn in (("analyze", analyze_before), ("export", export), ("annotate", annotate), ("merge", merge),
                     ("finetune", finetune), ("analyze_after", analyze_after), ("compare", compare)):
        if not step(name, fn):
            break
    return state.data


def round_dataset(root: Path, train: Path, view: Path) -> Path:
    """A dataset folder for a later round: ``train.json`` = ``train`` (the previous round's
    merged file), ``val.json`` as in ``root``, ``test.json`` = ``root``'s unlabeled split
    without the images ``train`` already holds (so they are neither analysed as unlabeled nor
    picked again), ``images`` a link to ``root/images``. Rewritten with the same bytes on a
    resume. Returns ``view``."""
    def read(path: Path) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArmbenchError(f"cannot read {path} ({exc}); give a COCO file (e.g. the previous round's "
                                "LOOP/train_merged.json)") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ArmbenchError(f"{path} is not a COCO file (no 'images' list)")
        return data

    from armbench_segmentation.data.coco import file_name_key

    labeled = read(train)
    have = {file_name_key(im.get("file_name", "")) for im in labeled["images"]}
    test = read(root / "test.json")
    images = [im for im in test["images"] if file_name_key(im.get("file_name", "")) not in have]
    ids = {im.get("id") for im in images}
    unlabeled = {**test, "images": images,
                 "annotations": [a for a in test.get("annotations", []) if a.get("image_id") in ids]}
    view.mkdir(parents=True, exist_ok=True)
    link = view / "images"
    if not link.exists():
        try:
            link.symlink_to((root / "images").resolve(), target_is_directory=True)
        except OSError as exc:
            raise ArmbenchError(f"cannot link {link} to {root / 'images'} ({exc.strerror or exc}); run the round "
                                "on a file system that allows symbolic links") from None
    for name, data in (("train.json", labeled), ("test.json", unlabeled)):
        text = json.dumps(data)
        if not (view / name).is_file() or (view / name).read_text(encoding="utf-8") != text:
            atomic_write_text(view / name, text)
    if (root / "val.json").is_file():
        text = (root / "val.json").read_text(encoding="utf-8")
        if not (view / "val.json").is_file() or (view / "val.json").read_text(encoding="utf-8") != text:
            atomic_write_text(view / "val.json", text)
    LOG.info("round dataset %s: %d train images, %d of %d unlabeled left", view, len(labeled["images"]),
             len(images), len(test["images"]))
    return view


def _oracle_annotations(root: Path, loop: Path) -> Path:
    """The picked images' ground truth from the unlabeled split (test.json), as an annotator's export."""
    picks = json.loads((loop / "before" / "label_picks.coco.json").read_text(encoding="utf-8"))
    names = {im["file_name"] for im in picks.get("images", [])}
    gt = json.loads((root / "test.json").read_text(encoding="utf-8"))
    images = [im for im in gt.get("images", []) if im.get("file_name") in names]
    ids = {im["id"] for im in images}
    out = {"images": images, "annotations": [a for a in gt.get("annotations", []) if a.get("image_id") in ids],
           "categories": gt.get("categories", [])}
    if not out["annotations"]:
        raise ArmbenchError(f"--oracle: {root / 'test.json'} has no ground truth for the picked images; the oracle "
                            "only works on data whose unlabeled split is annotated (e.g. `armbench synth`)")
    path = loop / "annotated" / "oracle.coco.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out))
    return path


def loop_status(state: dict, steps: Sequence[str] = STEPS) -> str:
    done = [s for s in steps if s in state.get("steps", {})]
    todo = [s for s in steps if s not in done]
    return f"steps done: {', '.join(done) or '-'}; to do: {', '.join(todo) or '- (round complete)'}"
