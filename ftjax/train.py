"""THE trainer, for every model and task. Read it top to bottom:

workdir -> mesh -> data -> model + optimizer -> state (ftjax/state.py: the latest checkpoint in the
workdir, else init.source or a fresh init, straight into its shardings) -> loop: train step (jit,
donated state), metrics, evaluators, best checkpoint, periodic checkpoint, SIGTERM/SIGINT -> save and
exit 0. It returns a Result (the last metrics, the step reached, the signal that stopped it if one did).

State is functional (state.TrainState: pure-dict parameters and model state, optimizer state, step,
RNG). Everything the next step depends on is in TrainState or the data iterator's state, so a resumed
run is bit-identical to an uninterrupted one on the same machine.
"""
import collections
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ftjax import checkpoint, data, defaults, evals, metrics, models, optim, parallel, tasks
from ftjax import state as states
from ftjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Result:
  """What train_and_evaluate did."""
  metrics: dict             # the last metrics logged (training and evaluation)
  step: int                 # the step the state reached
  total_steps: int
  stopped_by: str | None    # the signal that stopped the run before its end ('SIGTERM'); None when it finished


class EvaluationInterrupted(BaseException):
  """A signal arrived during an evaluation: it is abandoned and redone on resume. A BaseException,
  like KeyboardInterrupt, so that no library's `except Exception` swallows it on the way up."""


class NonFiniteError(UserError):
  """A loss or metric is NaN or infinite: the run stops before the value is written or saved."""


class Preemption:
  """SIGTERM / SIGINT set a flag; the loop finishes its step, saves and exits cleanly. During an
  evaluation (one process), the signal abandons it at its next batch (cloud preemption notices give
  ~30 s). A second signal while that is under way exits at once with one line (the last complete
  checkpoint stays valid).

  The handler never raises: it runs wherever the interpreter is, and inside a gc callback (XLA has one),
  a weakref callback or a finaliser Python prints such an exception and drops it. The evaluation polls
  the flag instead, before each batch (evals.polling)."""

  def __init__(self):
    self.requested = None
    self.peer = None     # multi-process: the signal any process saw, once agreed
    self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.requested:
      sys.stdout.flush()
      print(f'ftjax: error: second {name} while stopping: exiting now without saving; rerun the same command '
            'to resume from the last complete checkpoint', file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self.requested = name

  def _poll(self):
    if self.requested:
      raise EvaluationInterrupted(self.requested)

  @contextlib.contextmanager
  def interruptible(self, allowed: bool = True):
    """A region (an evaluation) that a signal abandons at its next batch instead of waiting for its end."""
    if not allowed:
      yield
      return
    self._poll()
    with evals.polling(self._poll):
      yield

  def agreed(self, sync: bool):
    """Multi-process: the first signal seen by any process, once they have compared notes (a
    collective, so only every few steps); None until then."""
    if sync and self.peer is None:
      from jax.experimental import multihost_utils
      flags = multihost_utils.process_allgather(np.int32(signal.Signals[self.requested].value if self.requested else 0))
      hit = [int(f) for f in np.ravel(flags) if f]
      self.peer = signal.Signals(hit[0]).name if hit else None
    return self.peer

  def restore(self):
    for s, h in self._old.items():
      signal.signal(s, h)


class StepTrace:
  """config.profile's jax.profiler trace of whole training steps: started once the previous step's work
  is done, stopped once the last traced step's state is computed. Process 0 only: its host's devices run
  the same steps as every other's, and processes sharing a host would write the same file names."""

  def __init__(self, steps: range, logdir: str, done: int, log):
    self.steps = range(max(steps.start, done + 1), steps.stop) if jax.process_index() == 0 else range(0)
    self.logdir, self.log, self.first = logdir, log, None

  def before(self, step: int, state):
    """Step `step` (counted from 1) is about to start."""
    if self.steps and step == self.steps.start:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.logdir)
      self.first = step

  def after(self, step: int, state):
    if self.first is not None and step == self.steps[-1]:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.first = None
      which = f'step {step}' if step == self.steps.start else f'steps {self.steps.start}-{step}'
      self.log(f'profile: {which} traced to {self.logdir} ({self.view()})')

  def close(self, step: int):
    """A signal or an error stopped the run inside the window: the trace so far is still written."""
    if self.first is not None:
      self.first = None
      jax.profiler.stop_trace()
      self.log(f'profile: the run stopped at step {step}, inside the traced steps {self.steps.start}-'
               f'{self.steps[-1]}; the trace so far is in {self.logdir} ({self.view()})')

  def view(self):
    return (f'view: xprof --logdir={self.logdir} --port=6006, or tensorboard --logdir {self.logdir} and its '
            'Profile tab; pip install xprof')


def check_finite(values: dict, step: int, what: str):
  """Stops the run, in one line, on a NaN or infinite loss or metric: never written as a result."""
  bad = {k: v for k, v in values.items() if not math.isfinite(v)}
  if bad:
    hint = ('lower optim.lr, add optim.clip_norm, or check the data' if what == 'train' else
            'the model diverged or the data hold values the task cannot score; check the labels and inputs')
    raise NonFiniteError(f'{", ".join(f"{k} is {v}" for k, v in bad.items())} at step {step} ({what}); stopping '
                         f'without writing it ({hint})')


# ----------------------------------------------------------------------------------------------
# Pieces, each usable on its own (tests build steps without running the loop).
# ----------------------------------------------------------------------------------------------
def _tree_add(a, b):
  return jax.tree.map(jnp.add, a, b)


def make_train_step(graphdef, task, tx, schedule, accum_steps: int = 1, trainable=None):
  """(state, batch) -> (state, metrics). With accum_steps > 1 the batch is split into micro-batches
  whose gradients are averaged before one update: the same update as the whole batch at once, for
  models whose outputs do not mix examples (BatchNorm does: its statistics become per micro-batch).
  `trainable` (params -> tree of bools, optim.trainable_fn) stops gradients at frozen parameters, so
  XLA drops their backward pass (the optimizer gives them no update either)."""

  def loss_fn(params, model_state, batch, rng):
    if trainable is not None:
      params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable(params))
    model = nnx.merge(graphdef, params, model_state)
    loss, mets = task.loss(model, batch, rng)
    return loss, (mets, nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2]))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if accum_steps == 1:
      (_, (mets, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
    else:
      def split(x):
        if x.shape[0] % accum_steps:
          raise ValueError(f'batch of {x.shape[0]} does not split into {accum_steps} micro-batches')
        # Row r goes to micro-batch r % accum: each device keeps an equal share of every micro-batch.
        return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
      micro = jax.tree.map(split, batch)

      def body(carry, xs):
        g_sum, ms, m_sum = carry
        mb, i = xs
        (_, (mets, ms)), g = grad_fn(state.params, ms, mb, jax.random.fold_in(rng, i))
        return (_tree_add(g_sum, g), ms, _tree_add(m_sum, mets)), None

      shapes = jax.eval_shape(grad_fn, state.params, state.model_state,
                              jax.tree.map(lambda x: x[0], micro), rng)
      zeros = lambda t: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t)
      init = (zeros(shapes[1]), state.model_state, zeros(shapes[0][1][0]))
      (g_sum, model_state, m_sum), _ = jax.lax.scan(body, init, (micro, jnp.arange(accum_steps)))
      grads = jax.tree.map(lambda g: g / accum_steps, g_sum)
      mets = jax.tree.map(lambda m: m / accum_steps, m_sum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {f'train/{k}': v for k, v in mets.items()}
    out['train/learning_rate'] = schedule(state.step)
    out['train/grad_norm'] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, params=params, model_state=model_state,
                         opt_state=opt_state), out

  return step


def make_predict_step(graphdef_eval, task):
  def predict(state, batch):
    return task.predict(nnx.merge(graphdef_eval, state.params, state.model_state), batch)
  return predict


@dataclasses.dataclass(frozen=True)
class Step:
  """Everything a train step needs, for the trainer, ftjax.aot and ftjax.bench."""
  task: Any
  tx: optax.GradientTransformation
  layout: states.Layout             # init function, abstract state, its shardings, (train, eval) graphdefs
  trainable: Callable | None        # params -> tree of bools (optim.trainable_fn); None: everything trains
  train_step: Callable              # (state, batch) -> (state, metrics), not yet jitted


def build_step(config, mesh, total_steps: int) -> Step:
  family = models.get_module(config.model.name)
  task = tasks.build(config.task)
  tx, schedule = optim.build(config.optim, config.schedule, total_steps, layer_of=family.lr_layer)
  layout = states.layout(config, mesh, tx)
  trainable = optim.trainable_fn(config.optim)
  step = make_train_step(layout.graphdef_train if config.task.train_mode else layout.graphdef_eval, task, tx,
                         schedule, config.optim.accum_steps, trainable)
  return Step(task, tx, layout, trainable, step)


@dataclasses.dataclass(frozen=True)
class Programs:
  """A run's step and its jitted programs (the train step; the predict and feature steps its evaluators call)."""
  built: Step
  train_step: Callable              # jitted, donates the state
  predict: Callable                 # jitted (state, batch) -> predictions
  embed: Callable                   # jitted (state, batch) -> frozen features and labels

  def layout(self, seed: int) -> states.Layout:
    """The state's layout for a run with this seed: the same init program, which takes the seed as its argument."""
    return states.reseed(self.built.layout, seed)


_PROGRAMS: 'collections.OrderedDict[str, Programs]' = collections.OrderedDict()


def program_key(config, mesh, total_steps: int) -> str:
  """Everything a run's programs are built from: the model, task, optimizer and schedule configs, the step
  count (the schedule's), the sharding rules and the mesh. Not the seed, data or init.source: those are
  arguments (the state, the batches), not part of the program."""
  parts = {k: config[k].to_dict() for k in ('model', 'task', 'optim', 'schedule')}
  parts.update(total_steps=total_steps, rules=config.sharding_rules, axes=mesh.axis_names,
               devices=[[d.id for d in mesh.devices.flat], list(mesh.devices.shape)])
  return json.dumps(parts, sort_keys=True, default=repr)


def programs(config, mesh, total_steps: int) -> Programs:
  """build_step and its jitted programs, shared by every run of this process with the same program_key:
  an experiment's seeds and arms (scratch vs init.source), a resumed run, a sweep's repeats. Each program
  is traced, lowered and loaded once per process, not once per run (on 2 CPU cores, about half of a small
  run's 8 s set-up). The last few are kept."""
  key = program_key(config, mesh, total_steps)
  if key in _PROGRAMS:
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]
  built = build_step(config, mesh, total_steps)
  lay, data_sharding = built.layout, parallel.batch_sharding(mesh)
  progs = Programs(built, jax.jit(built.train_step, in_shardings=(lay.shardings, data_sharding),
                                  out_shardings=(lay.shardings, None), donate_argnums=0),
                   *eval_steps(lay.graphdef_eval, built.task, mesh, lay.shardings))
  _PROGRAMS[key] = progs
  while len(_PROGRAMS) > 4:
    _PROGRAMS.popitem(last=False)
  return progs


def make_embed_step(graphdef_eval, task):
  """Frozen features and labels, for the linear-probe / few-shot / k-NN evaluators."""
  def embed(state, batch):
    model = nnx.merge(graphdef_eval, state.params, state.model_state)
    return {'features': task.features(model, batch), 'label': batch['label']}
  return embed


def _of_devices(mesh) -> str:
  return f' ({mesh.size} of {jax.device_count()} devices)' if mesh.size < jax.device_count() else ''


def eval_steps(g_eval, task, mesh, state_sharding):
  """(predict, embed), jitted for states laid out as `state_sharding`."""
  data_sharding = parallel.batch_sharding(mesh)
  return (jax.jit(make_predict_step(g_eval, task), in_shardings=(state_sharding, data_sharding)),
          jax.jit(make_embed_step(g_eval, task), in_shardings=(state_sharding, data_sharding)))


def build_evaluators(config, mesh, predict_step, embed_step):
  return {name: evals.build(name, ecfg, config=config, predict_fn=predict_step, embed_fn=embed_step, mesh=mesh)
          for name, ecfg in config.evals.items()}


def _check_workdir(workdir: str):
  """Fails unless `workdir` is, or can be created as, a writable directory; creates nothing (a run
  that stops on bad input leaves the file system as it was)."""
  path = os.path.abspath(workdir)
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    why = 'a file' if not os.path.isdir(probe) else 'not writable'
    raise UserError(f'workdir {workdir!r} is not a writable directory: {probe} is {why}')


def _prepare_workdir(workdir: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UserError(f'workdir {workdir!r} is not a writable directory: {e.strerror or e}') from None


def _write_config(config, workdir):
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      if f.read() != text:
        print(f'note: {path} differs from this run\'s config; overwriting it', flush=True)
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------------
def train_and_evaluate(config, workdir: str) -> Result:
  """Runs (or resumes) the job in `workdir`: to its end, or to the step where a signal stopped it."""
  t_start = time.perf_counter()
  is_main = jax.process_index() == 0
  config = defaults.complete(config)     # every key the family and evaluators read; unknown keys fail here

  # ---- Workdir: checked now, written only once the inputs and the starting state are known good ----
  _check_workdir(workdir)

  # ---- Mesh ------------------------------------------------------------------------------------
  mesh = parallel.make_mesh(config.mesh_shape, config.mesh_axes)
  data_sharding = parallel.batch_sharding(mesh)
  n_data = parallel.data_parallel_size(mesh)
  if config.input.batch_size % n_data:
    raise UserError(f'input.batch_size={config.input.batch_size} is not divisible by the {n_data} '
                    'data-parallel devices')

  # ---- Data ------------------------------------------------------------------------------------
  train_iter, n_train = data.train_iterator(config.input, config.seed, jax.process_index(), jax.process_count(),
                                            classes=models.label_classes(config))
  total_steps = config.total_steps
  if config.num_epochs > 0:
    total_steps = math.ceil(config.num_epochs * n_train / config.input.batch_size)
  if total_steps <= 0:
    raise UserError(f'total_steps={total_steps}: set total_steps or num_epochs > 0')
  profiled = defaults.profile_steps(config.profile, total_steps) if 'profile' in config else range(0)

  # ---- Model, task, optimizer -----------------------------------------------------------------
  progs = programs(config, mesh, total_steps)
  built, train_step, layout = progs.built, progs.train_step, progs.layout(config.seed)
  abstract, trainable = layout.abstract, built.trainable
  tok, vocab = data.tokenizer(config.input), models.vocab_size(config.model)
  if tok is not None and vocab:
    data.check_vocab(tok, vocab, f'input.tokenizer={config.input.tokenizer!r}')
  evaluators = build_evaluators(config, mesh, progs.predict, progs.embed)

  # ---- Restore (the newest checkpoint that restores), else init.source or a fresh init ------------
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint) if checkpoint.has_checkpoints(workdir) else None
  state, _ = states.start(config, layout, ckpt, train_iter.set_state)
  step = int(jax.device_get(state.step))
  if ckpt:
    print(f'resumed from {workdir}/checkpoints/{step}', flush=True)
  _prepare_workdir(workdir)
  if is_main:
    _write_config(config, workdir)
    if tok is not None:      # the workdir is self-contained: later runs can use it as input.tokenizer
      tok.save(os.path.join(workdir, 'tokenizer.json'))
  ckpt = ckpt or checkpoint.Checkpointer(workdir, config.checkpoint)
  writer = metrics.Writer(workdir, total_steps, config.input.batch_size, start_step=step)
  n_train_params = _count(abstract.params) if trainable is None else sum(
      int(np.prod(p.shape)) for p, t in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(trainable(abstract.params))) if t)
  writer.log(f'{config.model.name}: {_count(abstract.params):,} parameters ({n_train_params:,} trained) | '
             f'mesh {dict(mesh.shape)}{_of_devices(mesh)} | {n_train:,} train examples | '
             f'{total_steps} steps of {config.input.batch_size}'
             + (f' | starting at step {step}' if step else ''))

  # ---- Loop ------------------------------------------------------------------------------------
  trace = StepTrace(profiled, os.path.join(workdir, 'tb'), step, writer.log)   # metrics.Writer's TensorBoard dir
  preempt = Preemption()
  single = jax.process_count() == 1   # evaluations are collectives across processes: not abandoned alone
  last, unfinished = {}, False     # unfinished: a signal abandoned an evaluation
  feed = parallel.DevicePrefetch(train_iter, data_sharding, config.input.device_prefetch)

  def result(metrics):
    stopped_by = (preempt.requested or preempt.peer) if (step < total_steps or unfinished) else None
    return Result(metrics, step, total_steps, stopped_by)

  def scored(state):
    """What the evaluators score: with optim.ema_eval the EMA of the parameters (from the optimizer state,
    sharded like the parameters), else the parameters themselves. Best checkpoints still save the whole state."""
    if not config.optim.ema_eval:
      return state
    return state.replace(params=optim.ema_params(state.params, state.opt_state))

  def due(name, ev, s):
    return s == total_steps or (ev.cfg.every and s % ev.cfg.every == 0)

  def evaluate(s, names):
    """The evaluators `names` at step s; False if a signal abandoned them (redone on resume)."""
    scored_state = scored(state)   # one object for every evaluator: those on frozen features share its features
    try:
      for name in names:
        ev = evaluators[name]
        t = time.perf_counter()
        with preempt.interruptible(single):
          res = ev(scored_state)
        check_finite(res, s, name)
        writer.write(s, res)
        writer.log(f'  {name} @ {s}: ' + ', '.join(f'{k} {v:.4f}' for k, v in res.items())
                   + f' ({time.perf_counter() - t:.1f}s)')
        last.update(res)
        if ckpt.maybe_save_best(s, state, feed.get_state(), res):
          writer.log(f'  new best {config.checkpoint.best_metric} = {ckpt.best_value:.4f}')
    except EvaluationInterrupted as e:
      nonlocal unfinished
      unfinished = True
      writer.log(f'{e}: abandoned the evaluation at step {s}; it is redone on resume')
      return False
    return True

  try:
    # Evaluations a signal abandoned at the restored step (their rows are missing): redo them first.
    if step and single:
      pending = [n for n, ev in evaluators.items() if due(n, ev, step) and not writer.has_metrics(step, n + '/')]
      if pending:
        writer.log(f'redoing the evaluations a signal abandoned at step {step}: {", ".join(pending)}')
        if not evaluate(step, pending):
          return result({})
    if step >= total_steps:
      writer.log(f'nothing to do: {workdir} already holds step {step} of {total_steps}')
      return result(last)
    while step < total_steps:
      trace.before(step + 1, state)
      batch = next(feed)
      with parallel.sharding(mesh, config.sharding_rules):    # what parallel.constrain pins activations by
        state, step_metrics = train_step(state, batch)
      step += 1
      final = step == total_steps
      stop = preempt.requested
      if not single:   # every process must stop at the same step: agree every 10 steps
        stop = preempt.agreed(step % 10 == 0)
      saving = final or step % config.checkpoint.every == 0 or stop

      if step % config.log_every == 0 or final or step == 1 or stop or saving:
        last = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        check_finite(last, step, 'train')        # a diverged state is neither logged nor saved
        writer.write(step, last)
        writer.progress(step, last)
      trace.after(step, state)

      due_now = [n for n, ev in evaluators.items() if due(n, ev, step)]
      if due_now and not evaluate(step, due_now) or single and preempt.requested:
        stop = preempt.requested
      if saving or stop:
        ckpt.save(step, state, feed.get_state())
      if stop and (unfinished or not final):
        writer.log(f'{stop}: saved step {step} to {workdir}/checkpoints; rerun the same '
                   'command to resume')
        break
  finally:
    trace.close(step)
    ckpt.wait()
    ckpt.close()
    writer.close()
    if not preempt.requested:    # once stopping on a signal, a second one still exits in one line
      preempt.restore()
  if step == total_steps and not unfinished:
    writer.log(f'done: {step} steps in {time.perf_counter() - t_start:.0f}s; ' +
               ', '.join(f'{k} {v:.4f}' for k, v in last.items() if not k.startswith('train/')))
  return result(last)
