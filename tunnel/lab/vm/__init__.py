"""The kernel lab: lab scenarios inside a QEMU guest running Debian's own kernel.

This machine's kernel has neither ESP nor netem, so strongSwan here can only use its userspace
backend (kernel-libipsec) and the namespace lab cannot delay or reorder packets. Debian's kernel,
emulated by QEMU (TCG), has both. ``guest.Guest`` boots it with this machine's filesystem shared
read-only (the project, its virtualenv and strongSwan are there), a writable results folder and
an agent (``agent``) that runs scenarios (``scenarios``) on request, so one boot serves many.

By hand: ``python -m tunnel.lab.vm run SCENARIO`` (``list`` names them).
"""
