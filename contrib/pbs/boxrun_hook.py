# PBS Pro execjob_launch hook: prefix the job's command with `boxrun wrap --` so that jobs
# submitted with CONTAINER_IMAGE (or BOXRUN_IMAGE) run in that image; others run bare.
#   qmgr -c "create hook boxrun event=execjob_launch"
#   qmgr -c "import hook boxrun application/x-python default boxrun_hook.py"
import pbs

BOXRUN = "/usr/local/bin/boxrun"

e = pbs.event()
env = e.env
if env.get("CONTAINER_IMAGE") or env.get("BOXRUN_IMAGE"):
    e.progname = BOXRUN
    e.argv = [BOXRUN, "wrap", "--"] + list(e.argv)
e.accept()
