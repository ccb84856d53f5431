"""Run directories: ``store`` opens and resumes a run under its lock and knows its layout, ``stages`` runs the
configured stages into it, ``read`` reads a finished run back for inspect and report."""
