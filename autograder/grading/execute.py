"""The grader's execution of a student's notebook: nbgrader's Execute in a sandbox.

:class:`GraderExecute` runs the notebook's kernel under the limits of
:mod:`autograder.sandbox` and appends the grader's capture cell, which saves the trained
model and summaries of the arrays for the evaluation. Its place in nbgrader's pipeline,
and the steps that grade what it captured, are :mod:`autograder.grading.preprocessors`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from queue import Empty
from typing import Any, ClassVar

from jupyter_client.kernelspec import NATIVE_KERNEL_NAME
from jupyter_core.utils import ensure_async, run_sync
from nbclient.exceptions import DeadKernelError
from nbclient.util import run_hook
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_output
from nbgrader.preprocessors import Execute
from traitlets import Bool, Integer

from autograder._runtime import check_outputs_compiled, environment
from autograder.fstree import remove_tree
from autograder.grading.capture import FIT_RECORDER_SOURCE, capture_source
from autograder.grading.output_budget import NOT_OUTPUT, OutputBudget, shorten_error
from autograder.grading.restore import restore_deleted_cells
from autograder.grading.tf_data import UNTUNED_TF_DATA_SOURCE
from autograder.rubric import lab_ids, load_rubric
from autograder.sandbox.files import close_to_others, grader_temp
from autograder.sandbox.kernel import (
    KernelSandbox,
    SandboxedKernelManager,
    kernel_exit_status,
    kernel_pid,
)
from autograder.sandbox.spare import start_spare_kernel, take_spare_kernel
from autograder.sandbox.stops import (
    cell_timeout_message,
    death_reason,
    memory_limit_message,
    record_stop,
)
from autograder.sandbox.watchdog import Watchdog
from autograder.settings import KERNEL_CPU_WEIGHT, QUIET_TENSORFLOW, Limits

__all__ = ["LAB_KERNEL_SETUP", "GraderExecute"]

# The grader's code run silently in a lab's kernel before the notebook's first cell:
# tf.data untuned (it stalls beside other kernels), then every fit() recorded.
LAB_KERNEL_SETUP = UNTUNED_TF_DATA_SOURCE + FIT_RECORDER_SOURCE


# A lab notebook's kernel: TensorFlow quiet, on the CPU.


async def _wait_for_ready(kc: Any, timeout: float) -> None:
    """Until the kernel answers ``kernel_info`` on shell and IOPub is connected (a message
    arrives there): jupyter_client's readiness check, without the flush that follows."""
    deadline = time.monotonic() + timeout
    while True:
        kc.kernel_info()
        try:
            msg = await ensure_async(kc.shell_channel.get_msg(timeout=1))
        except Empty:
            pass
        else:
            if msg["msg_type"] == "kernel_info_reply":
                try:
                    await ensure_async(kc.iopub_channel.get_msg(timeout=0.2))
                except Empty:
                    pass  # IOPub not connected yet: ask again
                else:
                    kc._handle_kernel_info_reply(msg)
                    return
        if not await ensure_async(kc.is_alive()):
            raise RuntimeError("Kernel died before replying to kernel_info")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")


class GraderExecute(Execute):
    """nbgrader's Execute, then one grader-owned cell that saves the model and array summaries.

    The kernel runs in an :mod:`autograder.sandbox` sandbox: an unprivileged account of its
    own when the grader is root, no network and a PID namespace where the OS allows it,
    process and file-size limits, a watchdog on memory and on the whole notebook's time,
    nbclient's per-cell timeout, and a cap on the output kept. A kernel stopped by a limit,
    or one that died, is not a failed autograde: the cells left show the reason as an error
    (which nbgrader scores as zero), and ``limit.json`` in the artifacts folder tells the
    evaluation why no model was captured.

    Graded cells deleted from the submission are put back from the gradebook first (nbgrader's
    own ``OverwriteCells.add_missing_cells``), so that each gets the grader's score.
    """

    runs_after: ClassVar[tuple[type, ...]] = ()
    runs_before: ClassVar[tuple[type, ...]] = ()

    # nbgrader's 30 s default per cell is far too short for a training cell.
    timeout = Integer(900, allow_none=True).tag(config=True)

    # Unset (None): from the AUTOGRADER_* environment variables, else the defaults of Limits.
    cell_timeout = Integer(
        None, allow_none=True, help="Seconds per cell (overrides AUTOGRADER_CELL_TIMEOUT)"
    ).tag(config=True)
    notebook_timeout = Integer(
        None,
        allow_none=True,
        help="Seconds for the whole notebook (overrides AUTOGRADER_NOTEBOOK_TIMEOUT)",
    ).tag(config=True)
    memory_limit_mb = Integer(
        None,
        allow_none=True,
        help="MiB of resident memory for the kernel and its children "
        "(overrides AUTOGRADER_MEMORY_MB)",
    ).tag(config=True)
    allow_network = Bool(
        None, allow_none=True, help="Let the student's kernel reach the network (default: no)"
    ).tag(config=True)
    restore_missing_cells = Bool(
        True, help="Put back graded cells deleted from the submission, from the gradebook"
    ).tag(config=True)
    spare_kernel = Bool(
        False,
        help="Once a notebook's kernel is done, start the next notebook's kernel (for a "
        "process that grades one notebook after another, as a batch worker does)",
    ).tag(config=True)
    spare_kernel_later = Bool(
        False,
        help="With spare_kernel: the next kernel is started by the caller "
        "(start_kernel_ahead), not as this notebook's kernel ends: a batch worker starts it "
        "once its evaluator has this notebook's capture, and both go on side by side",
    ).tag(config=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("kernel_manager_class", SandboxedKernelManager)
        # Widget state comes from the student's kernel, unbounded, and grading needs none.
        kwargs.setdefault("store_widget_state", False)
        # Once the last cell (the capture) has replied, nothing more is wanted of the kernel:
        # killed, not asked to shut down and waited for.
        kwargs.setdefault("shutdown_kernel", "immediate")
        super().__init__(*args, **kwargs)
        check_outputs_compiled()
        self._kernel_setup = ""  # the grader's code run in the kernel before the first cell
        # A bad setting fails when the pipeline is built, not once per notebook.
        self._reset_for_notebook(self.limits())

    def _reset_for_notebook(self, limits: Limits) -> None:
        """The state of one notebook's execution, as it is before its kernel starts: set
        up when the preprocessor is built, and again by each notebook's :meth:`_execute`."""
        self._limits = limits
        self._watchdog: Watchdog | None = None
        self._stopped: str | None = None  # why the kernel is gone, once it is
        self._next_cell = 0
        self._cell_timeouts = 0
        self._isolated = False
        self._sandbox: KernelSandbox | None = None
        self._last_sandbox: KernelSandbox | None = None  # released, kept for its record
        self._output = OutputBudget(limits)
        self._grader_cell: NotebookNode | None = None  # the capture, appended to the notebook
        self._weight = 1.0  # the kernel's cpu group's, as made

    def limits(self) -> Limits:
        """This run's limits: traits set here, else environment, else ``timeout``/defaults."""
        base = Limits(cell_timeout_s=self.timeout) if self.timeout and self.timeout > 0 else None
        limits = Limits.from_env(defaults=base)
        overrides: dict[str, Any] = {
            "cell_timeout_s": self.cell_timeout,
            "notebook_timeout_s": self.notebook_timeout,
            "memory_mb": self.memory_limit_mb,
            "network": self.allow_network,
        }
        return replace(limits, **{k: v for k, v in overrides.items() if v is not None})

    def preprocess(self, nb: NotebookNode, resources: Any) -> tuple[NotebookNode, Any]:
        limits = self.limits()
        lab = resources["nbgrader"]["assignment"]
        nb = self._restore_deleted_cells(nb, resources)
        self._kernel_setup = LAB_KERNEL_SETUP if lab in lab_ids() else ""
        if lab not in lab_ids():
            return self._execute(nb, resources, limits)
        artifacts = grader_temp(lab)
        state = resources.setdefault("autograder", {})
        state["artifacts"] = str(artifacts)
        cell = new_code_cell(capture_source(load_rubric(lab), artifacts))
        nb.cells.append(cell)
        aborted = True
        try:
            with environment(QUIET_TENSORFLOW):
                nb, resources = self._execute(
                    nb, resources, limits, grants=[artifacts], grader_cell=cell
                )
            aborted = False
        finally:
            # The grader's cell never reaches the autograded notebook or the feedback.
            if nb.cells and nb.cells[-1] is cell:
                nb.cells.pop()
            state["capture_outputs"] = [
                o.get("text", o.get("evalue", "")) for o in cell.get("outputs", [])
            ]
            # when the capture ran (nbclient's timestamps), for the batch's figures
            state["capture_timing"] = dict(cell.get("metadata", {}).get("execution", {}))
            hit = self._limit_hit(limits)
            if hit is not None:
                dog = self._watchdog
                details = (
                    {"peak_rss_mb": round(dog.peak_rss_mb), "elapsed_s": round(dog.elapsed, 1)}
                    if dog is not None
                    else None
                )
                record_stop(artifacts, *hit, limits, details)
                state["limit"] = hit[1]
            if aborted:
                # An error of the grader's own: nobody will read what was captured.
                remove_tree(artifacts)
                state.pop("artifacts", None)
        return nb, resources

    def _restore_deleted_cells(self, nb: NotebookNode, resources: Any) -> NotebookNode:
        info = resources.get("nbgrader", {})
        if not self.restore_missing_cells or not {"db_url", "notebook"} <= set(info):
            return nb
        return restore_deleted_cells(nb, resources, self)

    def _course_root(self) -> Path | None:
        root = self.config.get("CourseDirectory", {}).get("root")
        return Path(root) if isinstance(root, str) and root else None

    def _execute(
        self,
        nb: NotebookNode,
        resources: Any,
        limits: Limits,
        grants: list[Path] | None = None,
        grader_cell: NotebookNode | None = None,
    ) -> tuple[NotebookNode, Any]:
        self._reset_for_notebook(limits)
        self._grader_cell = grader_cell
        spare = None
        if self._spares:
            spare = take_spare_kernel(limits, self._kernel_name(nb), self._kernel_arguments())
        self._sandbox = box = spare[1] if spare is not None else KernelSandbox(limits)
        configured_timeout, self.timeout = self.timeout, limits.cell_timeout_s
        message = cell_timeout_message(limits)
        self.error_on_timeout = {
            "ename": "CellTimeoutError",
            "evalue": message,
            "traceback": [f"\x1b[0;31mCellTimeoutError\x1b[0m: {message}"],
        }
        try:
            if box.separate_account:
                # Another account runs the kernel: the rest of the course is out of its reach.
                root = self._course_root()
                close_to_others([root] if root is not None else [])
                for path in grants or []:
                    box.grant(path)
            if "autograder" in resources:
                resources["autograder"]["kernel_started_ahead"] = spare is not None
            if spare is None:
                nb, resources = super().preprocess(nb, resources)
            else:
                km = spare[0]
                path = resources.get("metadata", {}).get("path")
                if path:
                    box.fill_workdir(Path(path))
                self._kernel_started(km)
                nb, resources = super().preprocess(nb, resources, km=km)
        except (DeadKernelError, RuntimeError) as exc:
            # Died outside a cell (while starting, say): the cells that never ran say why.
            # A RuntimeError is nbclient's "kernel died before replying": ours only if the
            # watchdog stopped it.
            stopped_by_us = self._watchdog is not None and self._watchdog.reason is not None
            if not (isinstance(exc, DeadKernelError) or stopped_by_us):
                raise
            self._stopped = self._stopped or self._death_reason()
            for cell in nb.cells[self._next_cell :]:
                self._mark_stopped(cell)
        finally:
            if self._watchdog is not None:
                self._watchdog.stop()
            self.timeout = configured_timeout  # the next notebook reads its own limits
            if spare is not None and self.km is not None:
                # nbclient leaves a kernel it did not start running: ours to end.
                try:
                    self._cleanup_kernel()
                except Exception as exc:
                    self.log.warning("shutting down the kernel: %s", exc)
            # After the kernel: its account's processes killed, the artifacts reclaimed.
            box.release()
            self._sandbox, self._last_sandbox = None, box
            if self._spares and not self.spare_kernel_later:
                self._start_spare(limits)
        if "autograder" in resources:
            resources["autograder"]["network_isolated"] = self._isolated
            resources["autograder"]["sandbox"] = box.describe()
            if self._output.cut_cells:
                resources["autograder"]["output_dropped"] = self._output.cut_cells
        return nb, resources

    def create_kernel_manager(self) -> Any:
        km = super().create_kernel_manager()
        if isinstance(km, SandboxedKernelManager):
            km.network = self._limits.network
            km.limits = self._limits
            km.sandbox = self._sandbox
        return km

    async def async_start_new_kernel_client(self) -> Any:
        """nbclient's, waiting for the kernel as jupyter_client's ``wait_for_ready`` does but
        without its last 0.2 s of waiting for silence on IOPub: nbclient reads only messages
        that answer its own requests, so nothing left there can reach a cell."""
        assert self.km is not None
        try:
            self.kc = self.km.client()
            await ensure_async(self.kc.start_channels())
            await _wait_for_ready(self.kc, self.startup_timeout)
        except Exception as exc:
            self.log.error("Error occurred while starting new kernel client: %s", exc)
            await self._async_cleanup_kernel()
            raise
        self.kc.allow_stdin = False
        if self._kernel_setup:
            await self._run_silently(self._kernel_setup)
        await run_hook(self.on_notebook_start, notebook=self.nb)
        return self.kc

    async def _run_silently(self, code: str) -> None:
        """The grader's own code in the kernel before the notebook's first cell (nothing
        shown, no history); a failure leaves its record missing, which the checks handle."""
        assert self.kc is not None
        msg_id = self.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + max(60.0, float(self.startup_timeout))
        while time.monotonic() < deadline:
            try:
                reply = await ensure_async(self.kc.get_shell_msg(timeout=1))
            except Empty:
                if self.km is None or not await ensure_async(self.km.is_alive()):
                    return
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                if reply.get("content", {}).get("status") != "ok":
                    self.log.warning("the grader's set-up in the kernel failed")
                return

    start_new_kernel_client = run_sync(async_start_new_kernel_client)

    def start_new_kernel(self, **kwargs: Any) -> None:
        super().start_new_kernel(**kwargs)
        self._kernel_started(self.km)

    def _kernel_started(self, km: Any) -> None:
        """The notebook's time and memory are watched from here."""
        self._isolated = bool(getattr(km, "isolated", False))
        pid = kernel_pid(km)
        if pid is not None:
            box = getattr(km, "sandbox", None)
            levels = 2 if box is not None and box.pid_namespace else 0  # `unshare`, init
            group = getattr(box, "cgroup", None)
            self._watchdog = Watchdog(
                pid,
                self._limits,
                launcher_levels=levels,
                members=group.procs_files[0] if group is not None else None,
            ).start()

    def start_kernel_ahead(self) -> None:
        """Start a lab notebook's kernel now, for the next :meth:`preprocess` of this process
        (``spare_kernel``): a batch worker does it before its first submission."""
        if self._spares:
            with environment(QUIET_TENSORFLOW):
                self._start_spare(self.limits())

    @property
    def _spares(self) -> bool:
        return self.spare_kernel and issubclass(self.kernel_manager_class, SandboxedKernelManager)

    def _start_spare(self, limits: Limits) -> None:
        if self.kernel_name:
            km = self.kernel_manager_class(kernel_name=self.kernel_name, config=self.config)
        else:
            km = self.kernel_manager_class(config=self.config)
        start_spare_kernel(km, limits, self._kernel_arguments())

    def _kernel_name(self, nb: NotebookNode) -> str:
        # as nbclient's create_kernel_manager chooses it
        name = self.kernel_name or nb.metadata.get("kernelspec", {}).get("name")
        return str(name or NATIVE_KERNEL_NAME)

    def _kernel_arguments(self) -> list[str]:
        # as nbclient's start_new_kernel passes them to a Python kernel
        arguments = list(self.extra_arguments)
        hist = any(a.startswith("--HistoryManager.hist_file") for a in arguments)
        if self.ipython_hist_file and not hist:
            arguments.append(f"--HistoryManager.hist_file={self.ipython_hist_file}")
        return arguments

    def preprocess_cell(self, cell: NotebookNode, resources: Any, index: int) -> Any:
        if self._stopped is not None:
            # The kernel is gone: say so rather than wait on it for every cell left.
            self._mark_stopped(cell)
            return cell, resources
        self._next_cell = index + 1
        self._weigh(1.0 if cell is self._grader_cell else KERNEL_CPU_WEIGHT)
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            self._stopped = self._death_reason()
            self.log.warning("cell %d: %s", index, self._stopped)
            self._mark_stopped(cell)
            return cell, resources
        if any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", [])):
            self._cell_timeouts += 1
        return cell, resources

    def _weigh(self, weight: float) -> None:
        """The kernel's cpu weight: a quarter of a grader process's for the student's cells
        (the grader's steps between notebooks go first), a whole one for the kernel's
        start and the grader's capture."""
        group = self._sandbox.cgroup if self._sandbox is not None else None
        if group is not None and weight != self._weight:
            group.weigh(weight)
            self._weight = weight

    def _death_reason(self) -> str:
        if self._watchdog is not None and self._watchdog.reason:
            return self._watchdog.reason
        if self._memory_stopped():
            return memory_limit_message(self._limits)
        return death_reason(kernel_exit_status(self.km))

    def _memory_stopped(self) -> bool:
        """Whether the kernel's memory cgroup stopped it (the hard cap, which counts what the
        watchdog does not: memory-backed files, shared memory, page cache)."""
        box = self._sandbox or self._last_sandbox
        return box is not None and box.memory_stop()

    def process_message(
        self, msg: dict[str, Any], cell: NotebookNode, cell_index: int
    ) -> NotebookNode | None:
        """nbclient's message handling, keeping what the notebook's output budget admits."""
        kind = msg.get("msg_type", "")
        if kind in NOT_OUTPUT or kind.startswith("comm"):
            return super().process_message(msg, cell, cell_index)
        content = msg.get("content")
        if not isinstance(content, dict) or not self._output.admit(kind, content, cell, cell_index):
            return None
        return super().process_message(msg, cell, cell_index)

    def on_cell_executed(self, **kwargs: Any) -> None:
        """nbgrader's: adds the execute reply's error when no output of the cell has its
        name. The reply comes from the kernel too: shortened the way outputs are, and
        weighed against the budget if it is added."""
        reply = kwargs.get("execute_reply") or {}
        content = reply.get("content") if isinstance(reply, dict) else None
        if isinstance(content, dict) and content.get("status") == "error":
            shorten_error(content)
        cell = kwargs.get("cell")
        before = len(cell.get("outputs", [])) if cell is not None else 0
        super().on_cell_executed(**kwargs)
        if cell is not None and len(cell.get("outputs", [])) != before:
            self._output.weigh_added(cell.outputs[-1])

    def _mark_stopped(self, cell: NotebookNode) -> None:
        if cell.cell_type != "code" or not cell.source.strip():
            return
        assert self._stopped is not None
        cell.setdefault("outputs", []).append(
            new_output(
                "error",
                ename="KernelStopped",
                evalue=self._stopped,
                traceback=[f"\x1b[0;31mKernelStopped\x1b[0m: {self._stopped}"],
            )
        )

    def _limit_hit(self, limits: Limits) -> tuple[str, str] | None:
        """Which limit stopped or cut short this notebook (kind, reason), if one did; or why
        its kernel died."""
        dog = self._watchdog
        if dog is not None and dog.kind is not None and dog.reason is not None:
            return dog.kind, dog.reason
        if self._stopped is not None and self._memory_stopped():
            return "memory", self._stopped
        if self._stopped is not None:
            return "kernel_died", self._stopped
        if self._cell_timeouts:
            return "cell_time", cell_timeout_message(limits)
        return None
