"""Boot Debian's kernel under QEMU (TCG) with this machine's filesystem, and run jobs in it.

Why TCG: /dev/kvm on these machines only runs specially built guest kernels, and a stock Debian
kernel is what operators run (it has ESP, XFRM, netem). Emulation is about 20 times slower than
the host: use the guest for behaviour, never for speed.

The guest sees this machine's ``/`` read-only over 9p (so the project, its virtualenv and
strongSwan are simply there), with throw-away overlays on /etc, /var, /root and /home and empty
tmpfs /tmp and /run (the project is shared again at its own path, so a checkout under /tmp works).
One host folder, the *io folder*, is shared read-write at the same path:
the host drops job requests there and the guest's agent (``tunnel.lab.vm.agent``) writes logs,
exit statuses and scenario results back. The initramfs is busybox plus the few modules needed to
mount the shares; it is built afresh for each boot (it takes well under a second).

Files in the io folder: ``boot.sh`` (what the guest's init runs), ``console.log`` (the serial
console), ``agent.ready``, ``jobs/N.json`` -> ``jobs/N.log`` + ``jobs/N.rc``, ``results/NAME/``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")  # boots a -kernel in a fraction of SeaBIOS's time
REPO = Path(__file__).resolve().parents[3]
# what the guest's init needs before it can reach the root filesystem, in load order
# (dependencies are added from modules.dep)
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# loaded by boot.sh from the shared root once it is mounted: tun for espgw, the rest for kernel
# IPsec (strongSwan's kernel-netlink backend) and netem
GUEST_MODULES = ("tun", "veth", "esp4", "esp6", "xfrm_user", "xfrm_interface", "sch_netem", "nf_tables",
                 "chacha20poly1305", "authenc", "gcm", "af_key")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]+$")  # passed on the kernel command line and to sh

INIT = r"""#!/bin/sh
# espgw kernel lab init: mount this machine's / read-only, the io folder read-write, run boot.sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in /mods/*.ko; do insmod "$m" 2>/dev/null; done
IO=$(sed -n 's/.*espgw_io=\([^ ]*\).*/\1/p' /proc/cmdline)
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $o,cache=loose,ro hostroot /newroot || { echo "espgw-vm: root mount failed"; poweroff -f; }
R=/newroot
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t proc proc $R/proc; mount -t sysfs sys $R/sys; mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm; mount -t devpts devpts $R/dev/pts; mount -t tmpfs shm $R/dev/shm
mount -t tmpfs run $R/run
mount -t tmpfs ovl /ovl
for p in etc var root home; do
  mkdir -p /ovl/$p/u /ovl/$p/w
  mount -t overlay -o lowerdir=$R/$p,upperdir=/ovl/$p/u,workdir=/ovl/$p/w ovl $R/$p 2>/dev/null
done
[ -d $R/var/run ] && [ ! -L $R/var/run ] && mount -t tmpfs vrun $R/var/run
mount -t tmpfs vtmp $R/var/tmp 2>/dev/null
mkdir -p $R$IO && mount -t 9p -o $o io $R$IO || { echo "espgw-vm: io mount failed"; poweroff -f; }
# the project again at its own path: a checkout under /tmp or /run (a CI runner's) is hidden by the tmpfs above
PROJ=$(sed -n 's/.*espgw_repo=\([^ ]*\).*/\1/p' /proc/cmdline)
mkdir -p $R$PROJ 2>/dev/null
mount -t 9p -o $o,cache=loose,ro project $R$PROJ || { echo "espgw-vm: project mount failed"; poweroff -f; }
# the kernel's module auto-loading (request_module) runs in this initramfs: forward it to the real root
printf '#!/bin/sh\nexec /bin/chroot /newroot /sbin/modprobe "$@"\n' > /bin/modprobe-root
chmod +x /bin/modprobe-root; echo /bin/modprobe-root > /proc/sys/kernel/modprobe
stty -opost </dev/console 2>/dev/null
chroot $R /bin/sh $IO/boot.sh </dev/console >/dev/console 2>&1
echo $? > $R$IO/guest.rc
umount $R$IO; echo 0 > /proc/sys/kernel/printk
poweroff -f
"""

BOOT_SH = """# written by tunnel.lab.vm.guest: runs as root in the guest, on this machine's filesystem
cd {repo} || exit 125
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ESPGW_VM_IO={io} ESPGW_IN_VM=1
hostname espgw-vm
ip link set lo up
modprobe -a {modules} 2>/dev/null
exec {python} -m tunnel.lab.vm.agent {io}
"""


class GuestError(RuntimeError):
    """The guest could not be booted, or did not answer."""


@dataclass(frozen=True)
class JobResult:
    name: str
    returncode: int
    output: str
    seconds: float
    results: Path  # the job's results folder (scenarios write figures.json and logs there)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def figures(self) -> dict:
        path = self.results / "figures.json"
        return json.loads(path.read_text()) if path.exists() else {}


# --- what the guest needs ------------------------------------------------------------------------
def kernel_version() -> str | None:
    """ESPGW_VM_KERNEL, or the newest Debian amd64 kernel in /boot."""
    if os.environ.get("ESPGW_VM_KERNEL"):
        return os.environ["ESPGW_VM_KERNEL"]
    found = [p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*-amd64")]
    return max(found, key=_version_key) if found else None


def _version_key(version: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"[.-]", version)]


def unavailable_reason() -> str | None:
    """Why the kernel lab cannot run on this machine (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (the guest shares this machine's whole filesystem)"
    if shutil.which(QEMU) is None:
        return f"needs {QEMU} (apt-get install qemu-system-x86; scripts/bootstrap.sh system)"
    kver = kernel_version()
    if kver is None or not Path(f"/boot/vmlinuz-{kver}").is_file():
        return "needs Debian's kernel in /boot (apt-get install linux-image-amd64)"
    if not Path(f"/lib/modules/{kver}/modules.dep").is_file():
        return f"needs /lib/modules/{kver} (linux-image-amd64)"
    if _static_busybox() is None:
        return "needs a static busybox (apt-get install busybox-static)"
    if not _SAFE_PATH.match(str(REPO)) or not _SAFE_PATH.match(sys.executable):
        return f"the project's path {REPO} and its Python {sys.executable} must be plain (letters, digits, ._+-/)"
    return None


def _static_busybox() -> Path | None:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        # a dynamically linked busybox has a PT_INTERP naming ld.so; the initramfs has none
        if path.is_file() and b"ld-linux" not in path.read_bytes()[:4096]:
            return path
    return None


# --- initramfs -----------------------------------------------------------------------------------
def module_load_order(kver: str, names: tuple[str, ...] = INITRAMFS_MODULES) -> list[Path]:
    """Module files for ``names`` and their dependencies, dependencies first (modules.dep)."""
    moddir = Path(f"/lib/modules/{kver}")
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    builtin = {_module_name(p) for p in (moddir / "modules.builtin").read_text().split()} \
        if (moddir / "modules.builtin").exists() else set()
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps.get(path, [])):  # modules.dep lists the deepest dependency last
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise GuestError(f"kernel {kver} has no module {name}")
    if any(not p.endswith(".ko") for p in order):
        raise GuestError("compressed kernel modules are not supported (busybox insmod loads .ko only)")
    return [moddir / p for p in order]


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


class _Cpio:
    """A gzip'd cpio archive in the kernel's initramfs format (newc)."""

    def __init__(self, out) -> None:
        self.out, self.ino = out, 1

    def add(self, name: str, mode: int, data: bytes = b"") -> None:
        self.ino += 1
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self.add(name, 0o040755)

    def file(self, name: str, data: bytes, executable: bool = False) -> None:
        self.add(name, 0o100755 if executable else 0o100644, data)

    def symlink(self, name: str, target: str) -> None:
        self.add(name, 0o120777, target.encode())

    def close(self) -> None:
        self.add("TRAILER!!!", 0)


def build_initramfs(kver: str, path: Path) -> Path:
    busybox = _static_busybox()
    if busybox is None:
        raise GuestError("no static busybox")
    with gzip.open(path, "wb", compresslevel=1) as raw:
        cpio = _Cpio(raw)
        for name in ("bin", "mods", "proc", "sys", "dev", "newroot", "ovl"):
            cpio.dir(name)
        cpio.file("bin/busybox", busybox.read_bytes(), executable=True)
        for applet in ("sh", "mount", "umount", "insmod", "mkdir", "chroot", "printf", "echo", "chmod",
                       "sed", "stty", "poweroff", "sleep", "cat"):
            cpio.symlink(f"bin/{applet}", "busybox")
        for n, module in enumerate(module_load_order(kver)):
            cpio.file(f"mods/{n:02d}-{module.name}", module.read_bytes())
        cpio.file("init", INIT.encode(), executable=True)
        cpio.close()
    return path


# --- the guest -----------------------------------------------------------------------------------
class Guest:
    """One QEMU guest; a context manager. ``run_scenario(name)`` / ``run(argv)`` wait for a job.

    ``io`` is the io folder (created; kept afterwards, it holds the logs and results). QEMU dies
    with this process (PR_SET_PDEATHSIG), at ``close()``, at exit and on SIGTERM.
    """

    def __init__(self, io: Path, *, smp: int | None = None, memory_mb: int = 1024, boot_timeout: float = 180):
        self.io = Path(io).resolve()
        if not _SAFE_PATH.match(str(self.io)):
            raise GuestError(f"the io folder's path must be plain (letters, digits, ._+-/): {self.io}")
        self.smp = smp or int(os.environ.get("ESPGW_VM_SMP", "2"))
        self.memory_mb = memory_mb
        self.boot_timeout = boot_timeout
        self.kver = kernel_version() or ""
        self.proc: subprocess.Popen | None = None
        self._jobs = 0
        self.boot_seconds: float | None = None

    @property
    def console_log(self) -> Path:
        return self.io / "console.log"

    def console_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> Guest:
        reason = unavailable_reason()
        if reason:
            raise GuestError(f"the kernel lab cannot run here: {reason}")
        self.io.mkdir(parents=True, exist_ok=True)
        (self.io / "jobs").mkdir(exist_ok=True)
        for old in (self.io / "jobs").iterdir():  # a reused folder: the agent must not rerun them
            old.unlink()
        (self.io / "results").mkdir(exist_ok=True)
        for stale in ("agent.ready", "guest.rc"):
            (self.io / stale).unlink(missing_ok=True)
        # the shared tree is read-only in the guest: compile the project's bytecode here, once
        subprocess.run([sys.executable, "-m", "compileall", "-q", "esp", "ike", "tunnel"], cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=False)
        (self.io / "boot.sh").write_text(BOOT_SH.format(repo=shlex.quote(str(REPO)), io=self.io,
                                                        python=shlex.quote(sys.executable),
                                                        modules=" ".join(GUEST_MODULES)))
        initrd = build_initramfs(self.kver, self.io / "initrd.cpio.gz")
        argv = [QEMU, "-accel", "tcg,thread=multi,tb-size=256", "-M", "q35", "-cpu", "max",
                "-smp", str(self.smp), "-m", str(self.memory_mb), "-nodefaults", "-no-user-config",
                *(["-bios", str(QBOOT)] if QBOOT.exists() else []),
                "-display", "none", "-no-reboot", "-serial", f"file:{self.console_log}", "-monitor", "none",
                "-kernel", f"/boot/vmlinuz-{self.kver}", "-initrd", str(initrd),
                "-append", (f"console=ttyS0 quiet loglevel=3 panic=-1 reboot=t rdinit=/init espgw_io={self.io} "
                            f"espgw_repo={REPO}"),
                "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
                "-fsdev", f"local,id=io,path={self.io},security_model=none,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=io,mount_tag=io",
                "-fsdev", f"local,id=project,path={REPO},security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=project,mount_tag=project"]
        started = time.monotonic()
        with open(self.io / "qemu.stderr", "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        _running.append(self)
        log.info("vm.booting", kernel=self.kver, smp=self.smp, io=str(self.io), pid=self.proc.pid)
        try:
            self._wait(lambda: (self.io / "agent.ready").exists(), self.boot_timeout, "the guest's agent")
        except BaseException:
            self.close()
            raise
        self.boot_seconds = round(time.monotonic() - started, 1)
        log.info("vm.ready", seconds=self.boot_seconds)
        return self

    def _wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise GuestError(f"the guest stopped (qemu exit {code}) while waiting for {what}:\n"
                                 f"{self.console_tail()}\n{_read(self.io / 'qemu.stderr')[-2000:]}")
            if time.monotonic() > deadline:
                raise GuestError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.console_tail()}")
            time.sleep(0.1)

    def submit(self, job: dict, name: str | None = None) -> str:
        """Queue a job (``{"scenario": NAME}`` or ``{"argv": [...]}``); returns its id."""
        if self.proc is None or self.proc.poll() is not None:
            raise GuestError("the guest is not running")
        self._jobs += 1
        job_id = f"{self._jobs:03d}-{name or job.get('scenario') or 'cmd'}"
        tmp = self.io / "jobs" / f".{job_id}.tmp"
        tmp.write_text(json.dumps(job))
        tmp.rename(self.io / "jobs" / f"{job_id}.json")  # the agent sees whole requests only
        return job_id

    def wait(self, job_id: str, timeout: float) -> JobResult:
        started = time.monotonic()
        rc_path = self.io / "jobs" / f"{job_id}.rc"
        try:
            self._wait(rc_path.exists, timeout, f"job {job_id}")
        except GuestError as exc:
            raise GuestError(f"{exc}\n--- job output\n{_read(self.io / 'jobs' / f'{job_id}.log')[-4000:]}") from None
        code = int(_read(rc_path).strip() or "125")
        name = job_id.split("-", 1)[1]
        return JobResult(name, code, _read(self.io / "jobs" / f"{job_id}.log"), round(time.monotonic() - started, 1),
                         self.io / "results" / name)

    def run_scenario(self, name: str, timeout: float = 300, **params) -> JobResult:
        return self.wait(self.submit({"scenario": name, "params": params, "timeout": timeout}), timeout + 30)

    def run(self, argv: list[str], timeout: float = 120) -> JobResult:
        return self.wait(self.submit({"argv": [str(a) for a in argv], "timeout": timeout}), timeout + 30)

    def close(self, timeout: float = 20) -> int | None:
        """Ask the agent to shut the guest down; kill QEMU if it does not within ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        self.proc = None
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                (self.io / "jobs" / "shutdown").write_text("")
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self in _running:
            _running.remove(self)
        log.info("vm.stopped", qemu_exit=proc.returncode, guest_rc=_read(self.io / "guest.rc").strip() or None)
        return proc.returncode

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _die_with_parent() -> None:
    """In the child before exec: QEMU gets SIGKILL when the process that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_running: list[Guest] = []


@atexit.register
def _stop_all() -> None:
    for guest in list(_running):
        with contextlib.suppress(Exception):
            guest.close(timeout=5)
