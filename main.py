"""Transfer learning with a pretrained ConvNet, in JAX/Flax.

    python main.py --config=configs/cats_dogs.py --workdir=DIR [--config.KEY=VALUE ...]
    python main.py --config=configs/cats_dogs.py --workdir=DIR --mode=evaluate [--checkpoint=best]
    python main.py --config=configs/cats_dogs.py --workdir=DIR --mode=predict --inputs=PATH \
        [--output=FILE.csv]
    python main.py --config=configs/cats_dogs.py --workdir=DIR --mode=export [--quantize=int8]
    python main.py --config=configs/cats_dogs.py --workdir=DIR --mode=explain --inputs=PATH \
        [--output=FOLDER]
    python main.py --workdir=DIR --mode=predict --model=DIR/export/model.tflite --inputs=PATH

Training uses every local device (data parallelism). On several hosts, start the same command on
each, adding --num_processes=N --process_id=I --coordinator_address=HOST:PORT (host 0's address),
or --distributed alone where JAX detects the cluster itself (Slurm, Cloud TPU, ...).
"""
import os

from absl import app, flags
from ml_collections import config_flags

from tlflax import cli, errors, interrupts

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:variant]).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, history, plots and outputs.')
flags.DEFINE_enum('mode', 'train',
                  ['train', 'evaluate', 'predict', 'explain', 'export', 'lr_find'],
                  'What to do.')
flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test'],
                  'evaluate: the split to evaluate (per-class report in WORKDIR/evaluation/).')
flags.DEFINE_string('checkpoint', 'latest', 'evaluate, predict, explain, export: the checkpoint '
                    'to use: latest (the newest that restores), ema (its average of the weights, '
                    'train.ema_decay), best (by the best_metric the run was trained with, kept '
                    'besides the latest checkpoints_to_keep) or an epoch.')
flags.DEFINE_string('inputs', None, 'predict, explain: an image, a folder (recursive) or a glob '
                    'pattern.')
flags.DEFINE_string('model', None, 'predict: an exported .tflite file (with its labels.txt) to '
                    'classify with instead of a checkpoint; --config is then optional.')
flags.DEFINE_string('formats', 'saved_model,tflite,keras',
                    'export: comma-separated formats to write to WORKDIR/export/.')
flags.DEFINE_enum('quantize', 'none', ['none', 'int8', 'int8_full'],
                  'export: also write model_int8.tflite, calibrated on training images: int8 '
                  'with the layers the run fine-tuned and the head in float32 (int8), or all int8 '
                  '(int8_full: smaller and faster, less faithful).')
flags.DEFINE_string('output', None, 'predict: the CSV file to write (it must not exist); default '
                    'WORKDIR/predictions_<source>.csv, numbered _2, _3, ... rather than replacing '
                    'an earlier one. explain: the folder to write (new, or empty); default '
                    'WORKDIR/explain_<source>/, numbered the same way.')
flags.DEFINE_string('phase', None, 'lr_find: the phase to test (default: the first).')
flags.DEFINE_list('lr_range', ['1e-7', '1'], 'lr_find: the lowest and highest rate.')
flags.DEFINE_integer('lr_steps', 100, 'lr_find: the most steps (the test stops earlier when the '
                     'loss diverges).')
flags.DEFINE_bool('calibrated', True, 'predict, export: the probabilities divided by the '
                  'temperature fitted on the validation split (WORKDIR/calibration.json); '
                  '--nocalibrated gives the raw ones.')
flags.DEFINE_bool('allow_config_change', False, 'train: continue the workdir\'s run although the '
                  'config differs from the one it was made with (e.g. more epochs in the last '
                  'phase). Without it, a difference stops the run, listing the keys. evaluate: '
                  'evaluate on data settings (seed, data.*) other than the training run\'s.')
flags.mark_flags_as_required(['workdir'])
cli.mark_not_empty('workdir')
for name, what in (('inputs', 'images'), ('model', 'a .tflite file'),
                   ('output', 'a CSV file (predict) or a folder (explain)')):
  cli.mark_not_empty(name, what)


# Flags that only these modes read; given with another mode they are a usage error.
MODE_FLAGS = {'split': ('evaluate',),
              'checkpoint': ('evaluate', 'predict', 'explain', 'export'),
              'inputs': ('predict', 'explain'), 'model': ('predict',),
              'output': ('predict', 'explain'),
              'formats': ('export',),
              'quantize': ('export',), 'allow_config_change': ('train', 'evaluate'),
              'calibrated': ('predict', 'export'), 'phase': ('lr_find',),
              'lr_range': ('lr_find',), 'lr_steps': ('lr_find',)}


# What an interrupted mode leaves (training says it itself: `train.resume_hint`).
INTERRUPTED_OUTCOMES = {
    'train': 'run the same command again to resume',
    'evaluate': 'the report is written at the end: run it again',
    'export': 'export/ was not changed',
    'predict': 'no image was classified yet, so no CSV was written',
    'explain': 'no image was explained yet, so nothing was written',
    'lr_find': 'the run in the workdir was not changed'}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for name, modes in MODE_FLAGS.items():
    if FLAGS[name].present and FLAGS.mode not in modes:
      spelled = f'--[no]{name}' if FLAGS[name].boolean else f'--{name}'
      raise app.UsageError(f'{spelled} is for --mode={" or ".join(modes)}')
  if FLAGS.model and FLAGS['checkpoint'].present:
    raise app.UsageError('--checkpoint chooses among a workdir\'s checkpoints; --model is a file')
  if FLAGS.model and FLAGS['calibrated'].present:
    raise app.UsageError('--[no]calibrated applies to checkpoints; an exported --model keeps the '
                         'calibration it was exported with (export.json says which)')
  if FLAGS.model and FLAGS.config is not None and FLAGS.config.get('eval', {}).get(
      'tta', 'none') != 'none':
    raise app.UsageError('eval.tta applies to checkpoints; an exported --model classifies each '
                         'image once')
  if FLAGS.config is None and not FLAGS.model:
    raise app.UsageError('--config is required (except for --mode=predict --model=FILE)')
  if FLAGS.mode in ('predict', 'explain') and not FLAGS.inputs:
    raise app.UsageError(f'--mode={FLAGS.mode} needs --inputs=PATH')
  with cli.run_errors_as_one_line(INTERRUPTED_OUTCOMES[FLAGS.mode]):
    cli.prepare_process()
    import jax

    from tlflax import evaluation, predict, reports, train
    from tlflax.config import defaults
    if FLAGS.mode == 'train':
      result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)
      test = result.history['test']
      if jax.process_index() == 0:
        print(f"finished: test accuracy {test['accuracy']:.4f} on {test['count']} images; in "
              f"{FLAGS.workdir}: {', '.join(reports.main_outputs(FLAGS.workdir))}")
    elif FLAGS.mode == 'evaluate':
      report = train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.split,
                                         FLAGS.allow_config_change, FLAGS.checkpoint)
      print(evaluation.format_report(report, FLAGS.split))
      print(f'wrote {os.path.join(FLAGS.workdir, "evaluation", FLAGS.split)}.json and figures, '
            f'and {os.path.join(FLAGS.workdir, "report.html")}')
    elif FLAGS.mode == 'lr_find':
      from tlflax import lr_find
      low, high = lr_find.parse_range(FLAGS.lr_range)
      result = lr_find.range_test(FLAGS.config, FLAGS.workdir, FLAGS.phase, low, high,
                                  FLAGS.lr_steps)
      print(f"suggested learning rate {result['suggestion']:.3g} ({result['stopped']}); wrote "
            f"{os.path.join(FLAGS.workdir, lr_find.FOLDER)}/")
    elif FLAGS.mode == 'explain':
      from tlflax import explain
      from tlflax.data.folders import printable
      folder = None
      for path, label, probability, overlay in explain.explain_images(
          FLAGS.config, FLAGS.workdir, FLAGS.inputs, FLAGS.checkpoint, FLAGS.output):
        print(f'{path}\t{label}\t{probability:.4f}\t{printable(overlay)}')
        folder = overlay.parent
      print(f'wrote {printable(folder)}/ (an overlay per image and gradcam.csv)')
    elif FLAGS.mode == 'export':
      from tlflax.data import decoders
      if not decoders.tensorflow_installed():
        raise errors.ExportError('--mode=export writes SavedModel, Keras and TFLite files with '
                                 'TensorFlow, which is not installed')
      from tlflax.export import exporter
      record = exporter.export(FLAGS.config, FLAGS.workdir, exporter.parse_formats(FLAGS.formats),
                               FLAGS.checkpoint, FLAGS.quantize, FLAGS.calibrated)
      print(exporter.summary(record, os.path.join(FLAGS.workdir, 'export')))
    else:
      output = predict.output_path(FLAGS.workdir, FLAGS.output,
                                   predict.source_name(FLAGS.model, FLAGS.checkpoint))
      if FLAGS.model:  # batch size and image size limit: the config's, else the defaults
        settings = FLAGS.config or defaults()
        rows = predict.predict_exported(FLAGS.model, FLAGS.workdir, FLAGS.inputs,
                                        settings.batch_size, settings.data.max_pixels, output)
      else:
        rows = predict.predict(FLAGS.config, FLAGS.workdir, FLAGS.inputs, FLAGS.checkpoint,
                               output, FLAGS.calibrated)
      printed = 0
      try:
        for path, label, probability, _ in rows:
          print(f'{path}\t{label}\t{probability:.4f}')
          printed += 1
      except interrupts.Interrupted as e:
        if printed and not e.outcome:
          e.outcome = f'{output} holds the images printed above (and the rest of their batch)'
        raise
      print(f'wrote {output}')


if __name__ == '__main__':
  cli.run(main)
