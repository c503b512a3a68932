# Sourced by the bench/gpu_*.sh scripts: the set-up they share on a lent GPU machine (no network there).
# Before sourcing: OUT (results), BUDGET (seconds the script may take), PY (python), WORK (step()'s logs/ folder).
#   - the output goes to $OUT/log as well (the device tool brings $OUT back): scripts started together in one call
#     each need their own OUT;
#   - what vcot needs and the machine lacks travels as wheels in .whl: installed into /tmp/site once per set of
#     wheels (a warm machine keeps /tmp between calls), then on PYTHONPATH before the repository;
#   - left, wanted and step: each command runs under what is left of BUDGET, so a cut-off call still reports.
mkdir -p "$OUT" "$WORK/logs"
exec > >(tee "$OUT/log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=. TOKENIZERS_PARALLELISM=false VCOT_LOG_FORMAT=console
if ! $PY -c 'import trl' 2>/dev/null; then  # not on a machine set up for vcot (a CPU with its venv is)
  wheels=$(ls .whl 2>/dev/null)
  if [ -n "$wheels" ]; then  # once per set of wheels; two scripts started at once install it once
    (
      flock 9
      [ "$(cat /tmp/site/.installed 2>/dev/null)" = "$wheels" ] && exit 0
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && echo "$wheels" >/tmp/site/.installed
    ) 9>/tmp/site.lock || exit 1
  fi
  [ -f /tmp/site/.installed ] && export PYTHONPATH=/tmp/site:.
fi
left() { echo $((BUDGET - SECONDS - 15)); }
wanted() { [[ " $RUNS " == *" $1 "* ]]; }  # NAME: whether RUNS names it
step() {  # NAME COMMAND...: one command under what is left, its output in logs/NAME.log, its status in the log
  local name=$1 limit; shift; limit=$(left)
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped, ${limit}s left"; return 1; fi
  local start=$SECONDS
  timeout -s TERM "$limit" "$@" >>"$WORK/logs/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start))s (at ${SECONDS}s)"
  [ $rc = 0 ] || tail -n 25 "$WORK/logs/$name.log"
  return $rc
}
