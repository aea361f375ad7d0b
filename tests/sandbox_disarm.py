"""The disarm that hostile sandbox tests run first (a helper module, not a test).

It is the frame walk of issue 15: catch a refusal, find ``refuse`` in the traceback, make
it a no-op, so that what the hostile programs test is the kernel fence, not the tripwire.
"""

# Makes the audit hook's `refuse` a no-op and clears the violation it just recorded.
DISARM = """
import os, sys
def _disarm():
    try:
        os.system('true')
    except PermissionError as exc:
        tb = exc.__traceback__
        while tb is not None:
            refuse = tb.tb_frame.f_locals.get('refuse')
            if callable(refuse) and refuse.__defaults__:
                refuse.__defaults__[0][0] = None
                refuse.__code__ = (lambda what, violation=None, Forbidden=None: None).__code__
                return True
            tb = tb.tb_next
    return False
assert _disarm(), 'could not disarm the audit hook'
"""
