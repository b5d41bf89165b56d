"""The stimulus presenter: receives a run's schedule, waits for the scanner trigger, shows each
trial at its onset (taken at the screen flip) and reports every measured onset back.

:class:`PsychoPyDisplay` draws in a real PsychoPy window (imported only when used;
``pip install neurotwin[presenter]``); :class:`NullDisplay` keeps the same timing
without a screen, for simulation. The scanner trigger is the keyboard key ``5``
by default (as scanners send it; the keypad's 5 too, Num Lock on or off), or a
``trigger`` message from the controller. A run starts at the first trigger press
after its schedule arrived: the pulses of an earlier run, or of a scan started
before the schedule, never start it. Escape (``quit_key``) stops the presenter;
restarted on its journal, it resumes.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from kit.clock import paired_reading

from .peer import IDLE_POLL, NEW_STREAM, PeerServer
from .stream import sent_messages

log = logging.getLogger(__name__)


class NullDisplay:
    """No window: a 'flip' happens exactly when asked, on the presenter's clock (no frames to wait for)."""

    frame_interval = 0.0

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def prepare(self, kind: str, content: str | bytes) -> Any:
        return None

    def draw(self, prepared: Any, label: str) -> None:
        pass

    def flip(self, due: float | None = None) -> float:
        return self.clock() if due is None else due  # a simulated screen flips exactly when due

    def keys(self) -> list[tuple[str, float]]:
        return []

    def close(self) -> None:
        pass


def _save_screenshot(image: Any, path: Path) -> None:
    try:
        image.save(path)
    except OSError as exc:  # a screenshot is a record, not the experiment: never stop presenting for one
        log.error("could not write screenshot %s: %s", path, exc)


def _no_window(screen: int, exc: Exception) -> RuntimeError:
    """The error for a window that cannot open; pyglet's exception says why (no X display, no OpenGL...)."""
    where = f"DISPLAY={os.environ['DISPLAY']!r}" if os.environ.get("DISPLAY") else "DISPLAY is not set"
    return RuntimeError(f"the PsychoPy presenter cannot open a window on screen {screen} ({where}): "
                        f"{type(exc).__name__}: {exc}. Run it on the presentation computer's desktop, or use "
                        "--null to simulate without a screen")  # fmt: skip


class PsychoPyDisplay:
    """A PsychoPy window. Stimuli are prepared (decoded, uploaded) ahead of their onset; ``draw`` puts
    the next frame in the back buffer (and reads it back as a screenshot, if asked) ahead of its onset,
    so that ``flip`` at the onset only shows it; ``flip`` returns the flip time on the wall clock."""

    def __init__(
        self,
        size: tuple[int, int] = (1024, 768),
        fullscreen: bool = False,
        screen: int = 0,
        text_height: float = 0.06,
        screenshots: str | Path | None = None,
    ) -> None:
        try:
            from psychopy import core, event, visual
            from psychopy import logging as plog
        except ImportError as exc:
            raise RuntimeError("the PsychoPy presenter needs PsychoPy: pip install 'neurotwin[presenter]'") from exc
        except Exception as exc:  # importing its event module opens pyglet's shadow window
            raise _no_window(screen, exc) from None
        plog.console.setLevel(plog.ERROR)
        self._core, self._event = core, event
        try:
            self.win = visual.Window(size, fullscr=fullscreen, screen=screen, color="black", units="height",
                                     allowGUI=False, waitBlanking=True)  # fmt: skip
        except Exception as exc:
            raise _no_window(screen, exc) from None
        self.win.mouseVisible = False
        self._visual = visual
        self.text_height = text_height
        self.cross = visual.TextStim(self.win, text="+", height=0.08, color="white")
        # Real-time priority, as PsychoPy advises for timing-critical presentation (needs the permission).
        if not core.rush(True):
            log.warning("could not raise the presenter's priority (PsychoPy rush: the user needs the permission "
                        "to set a real-time scheduler); flips may be late when this computer is busy")  # fmt: skip
        measured = self.win.getActualFrameRate(nIdentical=10, nMaxFrames=120, nWarmUpFrames=10)
        self.frame_interval = 1.0 / measured if measured else 1 / 60
        self._to_wall = clock_offset(core.getTime)  # PsychoPy's clock -> wall clock
        self.screenshots = Path(screenshots) if screenshots else None
        self._shots = 0
        self._saver = ThreadPoolExecutor(1)  # PNGs are written off the presentation thread
        if self.screenshots:
            self.screenshots.mkdir(parents=True, exist_ok=True)

    def prepare(self, kind: str, content: str | bytes) -> Any:
        """A ready-to-draw stimulus: text, or an image from PNG bytes."""
        if kind == "text":
            return self._visual.TextStim(self.win, text=content, height=self.text_height, color="white", wrapWidth=1.2)
        from PIL import Image

        img = Image.open(io.BytesIO(content)).convert("RGB")
        w, h = img.size
        return self._visual.ImageStim(self.win, image=img, units="height",
                                      size=(0.8 * w / max(w, h), 0.8 * h / max(w, h)))  # fmt: skip

    def draw(self, prepared: Any, label: str) -> None:
        """Draw the next frame (``None``: the fixation cross) into the back buffer."""
        (self.cross if prepared is None else prepared).draw()
        if self.screenshots is not None:  # the back buffer, read now rather than just before the flip
            shot = self.win.getMovieFrame(buffer="back")
            self.win.movieFrames.clear()
            self._shots += 1
            self._saver.submit(_save_screenshot, shot, self.screenshots / f"{self._shots:04d}-{label}.png")

    def flip(self, due: float | None = None) -> float:
        return self.win.flip() + self._to_wall

    def keys(self) -> list[tuple[str, float]]:
        """Every key pressed since the last call (PsychoPy names), each with when it was seen, wall clock."""
        return [(name, at + self._to_wall) for name, at in self._event.getKeys(timeStamped=True)]

    def close(self) -> None:
        self._saver.shutdown()  # waits for the screenshots still being written
        self.win.close()
        self._core.rush(False)


def clock_offset(clock: Callable[[], float], samples: int = 50) -> float:
    """``time.time() - clock()``, from the sample whose two wall-clock readings bracket ``clock()`` most
    tightly: a single pair is off by however long the process was preempted between its two calls."""
    wall, other = paired_reading(time.time, clock, samples)
    return wall - other


def trigger_names(trigger_key: str | None, quit_key: str | None = None) -> set[str]:
    """The key names that trigger a run: ``trigger_key`` and the keypad's (whose 5 reads 'num_begin' with Num
    Lock off). Raises ValueError if ``quit_key`` is one of them: the first trigger would stop the presenter."""
    names = {trigger_key, f"num_{trigger_key}"} if trigger_key else set()
    if trigger_key == "5":
        names.add("num_begin")
    if quit_key and quit_key in names:
        raise ValueError(f"the quit key and the trigger key are both {quit_key!r}: the first trigger would stop")
    return names


class Stopped(Exception):
    """The operator pressed the quit key."""


class Presenter:
    """Serves the presentation protocol: schedule -> trigger -> trials at their onsets -> 'presented'."""

    def __init__(self, server: PeerServer, display: Any, trigger_key: str | None = "5", safety: Any = None,
                 speed: float = 1.0, quit_key: str | None = "escape", markers: Any = None) -> None:  # fmt: skip
        """``markers``: a :class:`hardware.lsl.MarkerOutlet` to publish every shown trial's onset on."""
        from stimulus_synthesis.safety import SafetyLimits

        self.speed = speed  # the server's clock runs this many times faster than real time (simulation)
        self.safety = safety or SafetyLimits()
        self.refused: list[dict] = []
        self.server = server
        self.display = display
        self.trigger_key = trigger_key
        self.trigger_keys = trigger_names(trigger_key, quit_key)
        self.quit_key = quit_key
        self.markers = markers
        server.ready = True  # hello: this presenter says `ready` once a schedule's stimuli are checked
        self.schedules: dict[int, list[dict]] = {}
        self.received: dict[int, float] = {}  # run -> when its schedule arrived (presenter clock)
        self.triggered: dict[int, float] = {}  # run -> time of its first trigger (presenter clock)
        self.done: set[tuple[int, int]] = set()
        self.log: list[dict] = []
        self.generation = 0  # counts controller streams: a trial of an earlier one stops where it is
        self.serving = False  # keys are read once serving (see _keys)
        self._restore()

    def _restore(self) -> None:
        """After a restart from the journal: the current stream's schedules and triggers again. Trials reported
        before the crash stay done; those whose onset passed while the presenter was down are refused."""
        records = self.server.stream_records()
        self.done |= {(m["run"], m["trial"]) for m in sent_messages(records) if m["type"] in ("presented", "refused")}
        # when each run's trials began counting (see _trigger)
        self.triggered |= {seq: at for kind, seq, at in records if kind == "triggered"}
        for msg in self.server.restored:
            self._apply(msg)
        now = self.server.clock()
        for run, trials in self.schedules.items():
            for trial in trials if run in self.triggered else []:
                if (run, trial["trial"]) not in self.done and self.triggered[run] + trial["onset"] < now:
                    self._refuse(run, trial, "the presenter restarted after its onset (shown in part or not at all)")
                    self.done.add((run, trial["trial"]))

    def _keys(self) -> None:
        """Act on the keys pressed since the last look (once serving: not while restoring): the quit key stops;
        a trigger press starts the earliest run whose schedule arrived before it. Other presses (a run's later
        volumes) are not triggers."""
        for key, at in self.display.keys() if self.serving else []:
            if key == self.quit_key:
                raise Stopped(f"{key} pressed")
            waiting = [run for run in self.schedules if run not in self.triggered and self.received[run] <= at]
            if waiting and key in self.trigger_keys:
                self._trigger(min(waiting), at)
                log.info("run %d: trigger key", min(waiting))
            elif waiting and self.trigger_keys:  # say so: a scanner set to send another key is a common slip
                log.info("run %d waits for the trigger key %r; %r was pressed", min(waiting), self.trigger_key, key)

    def _commands(self, timeout: float) -> None:
        self._keys()
        for msg in self.server.poll(timeout):
            self._apply(msg)
            self.server.keepalive()

    def _trigger(self, run: int, at: float) -> None:
        """Run ``run``'s onsets count from ``at`` (this clock); journaled, so a restart keeps the timing."""
        self.triggered[run] = at
        if self.server.journal is not None:
            self.server.journal.append("triggered", run, at)

    def _apply(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == NEW_STREAM:  # a new controller: nothing scheduled by the earlier one is shown
            self.schedules.clear()
            self.received.clear()
            self.triggered.clear()
            self.done.clear()
            self.generation += 1
        elif kind == "schedule":
            self._keys()  # presses from before the schedule arrived are not its trigger
            self.received[msg["run"]] = self.server.clock()
            self.schedules[msg["run"]] = []  # waiting already: a trigger pressed while its images are checked counts
            trials = self._safe(msg["run"], msg["trials"])
            self.schedules[msg["run"]] = sorted(trials, key=lambda tr: tr["onset"])
            log.info("run %d: schedule of %d trials", msg["run"], len(msg["trials"]))
            # (again after a restart on the journal: the controller takes the first one it waits for)
            self.server.send_reliable("ready", run=msg["run"], trials=len(trials))
        elif kind == "trigger" and msg["run"] not in self.triggered and msg["volume"] == 0:
            now = self.server.clock()
            at = msg.get("receiver_time")
            # A relayed trigger says when the volume began on this clock; receipt time adds the hop, and for a
            # real recording its pipeline's delay (seconds: the first volume reaches the controller late; trials
            # already due are shown at once, their lateness reported). One restored from the journal (killed
            # before its `triggered` record was written) is older, and still right.
            recent = not self.serving or now - 10.0 * self.speed < (at or 0.0)
            self._trigger(msg["run"], at if at is not None and at <= now and recent else now)
        elif kind == "stop":
            self.schedules.pop(msg["run"], None)

    def _refuse(self, run: int, trial: dict, reason: str) -> None:
        log.error("run %d trial %d refused: %s", run, trial["trial"], reason)
        self.refused.append({"run": run, "trial": trial["trial"], "reason": reason})
        self.server.send_reliable("refused", run=run, trial=trial["trial"], stimulus_id=trial["stimulus_id"],
                                  reason=reason)  # fmt: skip

    def _safe(self, run: int, trials: list[dict]) -> list[dict]:
        """The trials that pass the photosensitivity limits; each refused one is reported with its reason."""
        from kit.images import decode_png
        from stimulus_synthesis.safety import check_image, check_sequence

        grey = np.full((8, 8, 3), self.safety.background, np.uint8)
        frames: list[tuple[float, np.ndarray]] = [(0.0, grey)]
        keep = []
        for trial in sorted(trials, key=lambda tr: tr["onset"]):
            self.server.keepalive()  # checking a run's images can take seconds: heartbeats, and the trigger key
            self._keys()
            if trial["kind"] != "image":
                keep.append(trial)
                continue
            try:
                image = decode_png(trial["image"])
                report = check_image(image, self.safety)
                # Flashes are counted per second: the frames of the last second (and the one before) suffice.
                first = next((i for i, f in enumerate(frames) if f[0] >= trial["onset"] - 1.0), len(frames))
                recent = frames[max(0, first - 1) :]
                seq = check_sequence([*recent, (trial["onset"], image), (trial["onset"] + trial["duration"], grey)],
                                     self.safety)  # fmt: skip
                reason = "; ".join(report.reasons + seq.reasons)
            except Exception as exc:  # a corrupt image is refused, not shown
                reason = f"unreadable image: {exc}"
            if reason:
                if (run, trial["trial"]) not in self.done:  # else refused before a restart: said once
                    self._refuse(run, trial, reason)
                continue
            frames += [(trial["onset"], image), (trial["onset"] + trial["duration"], grey)]
            keep.append(trial)
        return keep

    def _wait_until(self, t: float) -> None:
        """Serve the link until shortly before t, then spin so the flip lands on time."""
        while (left := (t - self.server.clock()) / self.speed) > 0.004:  # real seconds left
            self._commands(min(left - 0.003, 0.02))
        while self.server.clock() < t - self.display.frame_interval / 2:
            pass

    def _present(self, run: int, trial: dict) -> None:
        start = self.triggered[run] + trial["onset"]
        kind = trial["kind"]
        if kind == "image":
            frames = [(start, self.display.prepare("image", trial["image"]), "image")]
        elif kind == "text" and trial["word_by_word"] > 0:
            words = trial["text"].split()
            frames = [(start + i * trial["word_by_word"], self.display.prepare("text", w), "text")
                      for i, w in enumerate(words)]  # fmt: skip
        elif kind == "text":
            frames = [(start, self.display.prepare("text", trial["text"]), "text")]
        else:
            frames = []
        if not frames:  # a fixation trial
            frames = [(start, None, "fixation")]
        onset = None
        generation = self.generation
        for at, prepared, label in frames:
            self.display.draw(prepared, label)
            self._wait_until(at)
            if self.generation != generation:  # a new controller took over while this trial waited
                return
            flip = self.display.flip(at)
            if onset is None:
                onset = flip
                self._mark(run, trial, start, onset)
        self.display.draw(None, "fixation")  # a fixation cross between trials
        self._wait_until(start + trial["duration"])
        offset = self.display.flip(start + trial["duration"])
        if self.generation != generation:
            return
        entry = {"run": run, "trial": trial["trial"], "stimulus_id": trial["stimulus_id"], "scheduled": start,
                 "onset": onset, "offset": offset}  # fmt: skip
        self.log.append(entry)
        log.info("presented %s", entry)
        self.server.send_reliable("presented", run=run, trial=trial["trial"], stimulus_id=trial["stimulus_id"],
                                  onset=onset, offset=offset, frame_interval=self.display.frame_interval,
                                  scheduled=start)  # fmt: skip
        self.done.add((run, trial["trial"]))

    def _mark(self, run: int, trial: dict, scheduled: float, onset: float) -> None:
        """Publish the trial's onset on the LSL marker stream, stamped with LSL's clock at the flip."""
        if self.markers is None:
            return
        stamp = self.markers.now() - (self.server.clock() - onset) / self.speed  # the flip, on LSL's clock
        marker = {"session": self.server.stream, "run": run, "trial": trial["trial"],
                  "stimulus_id": trial["stimulus_id"], "condition": trial.get("condition", ""), "kind": trial["kind"],
                  "text": trial.get("text", ""), "duration": trial["duration"], "scheduled": scheduled,
                  "onset": onset}  # fmt: skip
        if self.markers.images and trial["kind"] == "image":
            marker["image"] = base64.b64encode(trial["image"]).decode("ascii")
        self.markers.push(marker, stamp)

    def step(self, timeout: float = 0.01) -> None:
        """Serve the link; on a trigger, present the run's due trials."""
        self._commands(timeout)
        for run, trials in list(self.schedules.items()):
            if run not in self.triggered:
                continue
            for trial in trials:
                if self.schedules.get(run) is not trials:  # stopped, or a new controller's
                    break
                if (run, trial["trial"]) not in self.done:
                    self._present(run, trial)

    def serve(self, duration: float | None = None) -> None:
        """Present until ``duration`` seconds have passed (None: until stopped). The quit key stops at once,
        mid-trial too; the journal keeps what was reported, so a restart on it resumes the run."""
        self.display.draw(None, "fixation")
        self.display.flip()
        end = None if duration is None else time.monotonic() + duration
        self.serving = True
        try:
            while end is None or time.monotonic() < end:
                self.step(0.01 if self.schedules else IDLE_POLL)  # a waiting schedule polls the trigger key often
        except Stopped as exc:
            log.warning("%s: the presenter stops", exc)


def blank_fraction(png_or_array: Any) -> float:
    """Fraction of pixels equal to the most common value (1.0 for a blank screenshot)."""
    from PIL import Image

    img = Image.open(png_or_array) if isinstance(png_or_array, (str, Path)) else png_or_array
    a = np.asarray(img.convert("L")).ravel()
    return float(np.bincount(a).max() / a.size)
