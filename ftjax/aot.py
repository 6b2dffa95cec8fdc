"""Compile a config's train step for a mesh without running it, and print per-device memory:

  python -m ftjax.aot --config=configs/bert_base_mlm.py:smoke --workdir=/tmp/aot --devices=8 \\
      --config.mesh_axes="('fsdp',)"

--devices=N simulates N CPU devices (set before JAX starts), to check a layout meant for a bigger
machine; by default the real devices. The batch shapes come from one batch of the config's data.
Parameters and optimizer state are counted from their shardings; XLA's memory analysis of the
compiled program gives arguments, outputs and temporaries (activations, gradients) per device.
"""
import os
import sys


def _simulated_devices():
  for a in sys.argv:
    if a.startswith('--devices='):
      n = int(a.split('=', 1)[1])
      os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + f' --xla_force_host_platform_device_count={n}').strip()
      os.environ.setdefault('JAX_PLATFORMS', 'cpu')
      sys.argv.remove(a)
      return


def report(config) -> dict:
  import jax
  from ftjax import data, defaults, parallel, train
  config = defaults.complete(config)
  mesh = parallel.make_mesh(config.mesh_shape, config.mesh_axes)
  built = train.build_step(config, mesh, max(config.total_steps, 2))
  abstract, shard = built.layout.abstract, built.layout.shardings
  batch_sharding = parallel.batch_sharding(mesh)
  it, _ = data.train_iterator(config.input, config.seed)
  local = next(it)
  batch = {k: jax.ShapeDtypeStruct((config.input.batch_size, *v.shape[1:]), v.dtype, sharding=batch_sharding)
           for k, v in local.items()}
  state = built.layout.targets()
  with parallel.sharding(mesh, config.sharding_rules):
    compiled = jax.jit(built.train_step, in_shardings=(shard, batch_sharding), out_shardings=(shard, None),
                       donate_argnums=0).lower(state, batch).compile()
  mem = compiled.memory_analysis()
  out = {'devices': mesh.size, 'mesh': dict(mesh.shape),
         'params': parallel.bytes_per_device(abstract.params, shard.params),
         'params_unsharded': parallel.bytes_per_device(abstract.params, jax.tree.map(
             lambda _: parallel.replicated(mesh), abstract.params)),
         'optimizer_state': parallel.bytes_per_device(abstract.opt_state, shard.opt_state),
         'model_state': parallel.bytes_per_device(abstract.model_state, shard.model_state)}
  if mem is not None:
    out.update(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
               temporaries=mem.temp_size_in_bytes, aliased=mem.alias_size_in_bytes)
  return out


def main(argv):
  del argv
  from absl import flags
  from ftjax import cli
  from ftjax.errors import UserError
  try:
    r = report(flags.FLAGS.config)
  except UserError as e:
    cli.fail(str(e))
  mib = lambda b: f'{b / 2 ** 20:,.1f} MiB'
  print(f'train step compiled for {r["devices"]} devices, mesh {r["mesh"]}; per device:')
  for k in ('params', 'optimizer_state', 'model_state', 'arguments', 'outputs', 'temporaries', 'aliased'):
    if k in r:
      print(f'  {k:<16} {mib(r[k]):>14}' + (f'  (unsharded {mib(r["params_unsharded"])})' if k == 'params' else ''))


if __name__ == '__main__':
  from ftjax import cli
  cli.tune_malloc()
  _simulated_devices()
  from absl import app
  cli.define()
  app.run(main, flags_parser=cli.parse)
