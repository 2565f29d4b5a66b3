"""`pneumoscan dicomweb URL`: take CR/DX studies from a PACS, score them, store SC + SR back.

One pass (run_once):
1. send what an earlier run left in the spool;
2. QIDO-RS: the CR/DX studies, then each study's instances;
3. per study, the images still to do: single-frame CR/DX images whose result from this model
   (the same weights checksum) is neither on the server (read from its pneumoscan SRs) nor
   waiting in the spool; other objects are skipped with a logged reason;
4. WADO-RS each image, score it exactly as `pneumoscan predict` does (Predictor.predict on
   the retrieved file), Grad-CAM for the overlay, build SC + SR (results.py);
5. spool them, STOW-RS them, and unspool what the server confirmed.

A server that stays down after the retries ends the pass: what was scored stays spooled and
the studies not reached are done by the next pass. Nothing here prints a patient attribute.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import UID

from ..core import contract
from ..core.paths import cache_dir
from ..data.decode import ImageError, load_gray_original, load_many
from ..explain.cam import resize_map
from ..explain.explainer import Explainer
from ..inference.runtime import make_predictor
from .results import Finding, ModelIdentity, SeriesPair, build_results, read_source
from .web import RADIOGRAPHS, DicomWebClient, Instance, RequestFailed, Retry, ServerDown, Spool

log = logging.getLogger(__name__)
BATCH = 16  # images retrieved and scored together (spans studies)
STOW_FILES = 16  # files per STOW-RS request


@dataclass
class Summary:
    studies_seen: int = 0
    scored: set = field(default_factory=set)  # Study UIDs with an image scored this pass
    studies_skipped: Counter = field(default_factory=Counter)  # reason -> studies
    images_scored: int = 0
    instances_skipped: Counter = field(default_factory=Counter)  # reason -> instances
    stored: int = 0  # objects the server confirmed this pass (spooled ones included)
    failed: list[str] = field(default_factory=list)
    spooled: int = 0  # objects left in the spool for the next pass
    stopped: str | None = None  # why the pass ended early

    @property
    def studies_scored(self) -> int:
        return len(self.scored)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.spooled and self.stopped is None

    def text(self) -> str:
        lines = [f"studies seen {self.studies_seen}, scored {self.studies_scored}, skipped "
                 f"{sum(self.studies_skipped.values())}; images scored {self.images_scored}; "
                 f"objects stored {self.stored}; failed {len(self.failed)}; left in spool "
                 f"{self.spooled}"]
        lines += [f"  skipped study: {n} x {why}" for why, n in self.studies_skipped.items()]
        lines += [f"  skipped instance: {n} x {why}" for why, n in self.instances_skipped.items()]
        lines += [f"  failed: {why}" for why in self.failed]
        if self.stopped:
            lines.append(f"  stopped early: {self.stopped}")
        return "\n".join(lines)


@dataclass
class Loop:
    """One server, one model. `make_predictor(paths)` builds the predictor on the first
    images (as `pneumoscan predict` does: they check a new ONNX export); `identity` is that
    model's (ModelIdentity.from_checkpoint); `on_event(kind, study)` is told of each study
    scored ("scored") and stored ("stored")."""

    client: DicomWebClient
    spool: Spool
    identity: ModelIdentity
    make_predictor: Callable[[list[str]], object]
    on_event: Callable[[str, str], None] = lambda kind, study: None
    batch: int = BATCH  # images retrieved and scored together (spans studies)
    predictor: object = None

    def run_once(self, study: str | None = None) -> Summary:
        s = Summary()
        try:
            self._flush(s)
            uids = self.client.studies(study)
        except ServerDown as e:
            s.stopped = str(e)
            s.spooled = len(self.spool.pending())
            return s
        waiting, todo = self.spool.covered(self.identity.checksum), []
        try:
            for uid in uids:
                s.studies_seen += 1
                try:
                    images = self._plan(uid, waiting, s)
                except RequestFailed as e:
                    s.failed.append(f"study {uid}: {e}")
                    continue
                todo += [(uid, inst) for inst in images]
                if len(todo) >= self.batch:
                    self._score_and_store(todo, s)
                    todo = []
            if todo:
                self._score_and_store(todo, s)
        except ServerDown as e:
            s.stopped = f"{e}; studies not reached are done by the next pass"
        s.spooled = len(self.spool.pending())
        return s

    # ---------------------------------------------------------------------------- steps

    def _flush(self, s: Summary) -> None:
        pending = self.spool.pending()
        if pending:
            log.info("sending %d result objects left in the spool", len(pending))
        self._send(pending, s)

    def _send(self, paths: list[Path], s: Summary) -> None:
        for start in range(0, len(paths), STOW_FILES):
            chunk = paths[start:start + STOW_FILES]
            stored, failed = self.client.store([p.read_bytes() for p in chunk])
            for p in chunk:
                if self.spool.sop_of(p) in stored:
                    self.spool.remove(p)
                    s.stored += 1
            for uid, why in failed.items():
                s.failed.append(f"store {'all' if uid == '*' else uid}: {why} (kept in spool)")

    def _done_on_server(self, instances: list[Instance]) -> set[str]:
        """Source SOP UIDs that already have this model's SR on the server (the series
        description names the checksum's start; the SR's content is checked in full)."""
        from .results import SR_DESCRIPTION, no_values_in_messages, result_of

        done, checksum = set(), self.identity.checksum
        for inst in instances:
            if (inst.modality == "SR" and inst.series_description.startswith(SR_DESCRIPTION)
                    and checksum[:12] in inst.series_description):
                metadata = self.client.metadata(inst)
                with no_values_in_messages():
                    result = result_of(metadata)
                if result and result["checksum"] == checksum:
                    done.update(result["source_uids"])
        return done

    def _plan(self, study: str, waiting: set[str], s: Summary) -> list[Instance]:
        """The instances of `study` to score; skips counted with their reasons."""
        from .results import SC_DESCRIPTION, SR_DESCRIPTION

        instances = self.client.instances(study)
        done = self._done_on_server(instances)
        images, already = [], 0
        for inst in instances:
            if inst.series_description.startswith((SC_DESCRIPTION, SR_DESCRIPTION)):
                continue  # pneumoscan's own results
            reason = None
            if inst.rows is None:
                reason = f"non-image object ({UID(inst.sop_class).name or inst.sop_class})"
            elif inst.modality not in RADIOGRAPHS:
                reason = f"not a radiograph (modality {inst.modality or 'none'})"
            elif inst.frames > 1:
                reason = "multi-frame image"
            elif inst.sop in done or inst.sop in waiting:
                already += 1
                continue
            if reason:
                log.info("study %s: skipping instance %s: %s", study, inst.sop, reason)
                s.instances_skipped[reason] += 1
            else:
                images.append(inst)
        if not images:
            why = ("already holds this model's result" if already
                   else "no single-frame CR/DX image")
            log.info("study %s: skipped: %s", study, why)
            s.studies_skipped[why] += 1
        return images

    def _score_and_store(self, todo: list[tuple[str, Instance]], s: Summary) -> None:
        with tempfile.TemporaryDirectory(prefix="pneumoscan-wado-") as tmp:
            paths = []
            for study, inst in todo:
                path = Path(tmp) / f"{inst.sop}.dcm"
                try:
                    path.write_bytes(self.client.retrieve(inst))
                except RequestFailed as e:
                    s.failed.append(f"study {study}: instance {inst.sop}: {e}")
                    continue
                paths.append((study, inst, str(path)))
            results = self._score([p for _, _, p in paths])
            by_study: dict[str, list[Path]] = {}
            series: dict[str, SeriesPair] = {}
            for (study, inst, path), (finding, gray, heat, error) in zip(paths, results):
                if error:
                    s.failed.append(f"study {study}: instance {inst.sop}: "
                                    f"{error.replace(path, 'image')}")
                    continue
                pair = series.setdefault(study, SeriesPair.new())
                number = len(by_study.get(study, [])) // 2 + 1
                try:
                    sc, sr = build_results(read_source(path), gray, heat, finding,
                                           self.identity, pair, number)
                except Exception as e:  # noqa: BLE001 (a source highdicom cannot copy)
                    # The type only: a message could quote a patient attribute.
                    s.failed.append(f"study {study}: instance {inst.sop}: cannot build the "
                                    f"result objects ({type(e).__name__})")
                    continue
                by_study.setdefault(study, []).extend(
                    [self.spool.add(sc, "SC"), self.spool.add(sr, "SR")])
                s.images_scored += 1
        for study in by_study:
            s.scored.add(study)
            self.on_event("scored", study)
        for study, files in by_study.items():
            self._send(files, s)
            self.on_event("stored", study)

    def _score(self, paths: list[str]) -> list[tuple]:
        """(Finding, displayed gray, heatmap, error) per path: the probability from
        Predictor.predict, the very call behind `pneumoscan predict`."""
        if not paths:
            return []
        if self.predictor is None:
            self.predictor = self.make_predictor(paths)
        p = self.predictor
        predictions = p.predict(paths)
        ok = [i for i, r in enumerate(predictions) if not r.error]
        prep = p.ckpt.preprocessing
        arr, decoded, _ = load_many([paths[i] for i in ok], prep.input_size, prep.interpolation,
                                    storage_quality=prep.storage_quality)
        maps = dict(zip([ok[j] for j in decoded], Explainer(p).native_maps(arr)
                        if len(arr) else []))
        out = []
        for i, r in enumerate(predictions):
            if r.error or i not in maps:
                out.append((None, None, None, r.error or "could not be decoded twice"))
                continue
            try:
                gray = load_gray_original(paths[i])
            except ImageError as e:
                out.append((None, None, None, str(e)))
                continue
            heat = resize_map(maps[i], gray.shape[1], gray.shape[0])
            finding = Finding(r.probability, r.label, r.etiology, r.ood.flagged)
            out.append((finding, gray, heat, None))
        return out


def run(url: str, model=None, runtime: str = "auto", once: bool = False,
        study: str | None = None, poll: float = 60.0, spool_dir: str | Path | None = None,
        retry=None, report: Callable[[Summary], None] = lambda s: None) -> Summary:
    """`pneumoscan dicomweb`: passes over the server until interrupted (one with `once`),
    `poll` seconds apart; each pass's Summary goes to `report`; returns the last one."""
    import time

    ckpt = contract.read(contract.resolve(model))
    identity = ModelIdentity.from_checkpoint(ckpt)
    client = DicomWebClient(url, retry or Retry())
    spool = Spool(spool_dir or cache_dir() / "dicomweb-spool", url)
    loop = Loop(client, spool, identity, lambda paths: make_predictor(model, runtime, paths))
    try:
        while True:
            summary = loop.run_once(study)
            report(summary)
            if once:
                return summary
            time.sleep(poll)
    finally:
        client.close()
