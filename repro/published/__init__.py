"""Published numbers as data: one CSV per source, transcribed from the papers and the seed report.

Columns: paper, source (where the number is quoted), model, dataset, img_size, epochs, distill_method, teacher,
variant (empty for the model's default configuration), metric, value, hardware, note. A value that is not
known (UNCONFIRMED in the reference notes, or a run that was never made) is an empty cell, shown as missing.
Read them with `repro.report.load_published()`.
"""
