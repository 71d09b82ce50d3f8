"""Participant steps as choices, one participant per worker, preview mode, and the server-side listening record."""
from django.db import migrations, models
from django.db.models import Count


def settle_old_rows(apps, schema_editor):
    """Before the one-participant-per-worker constraint: 'full' is no longer a step, and older duplicates are set apart.

    A worker who already became several participants keeps the first; the others get a
    marked worker ID and are excluded from analysis (their answers stay, for the record).
    """
    Participant = apps.get_model("evaluation", "Participant")
    Participant.objects.filter(step="full").update(step="trials")
    groups = (
        Participant.objects.exclude(worker_id="").values("experiment_id", "source", "worker_id")
        .annotate(n=Count("id")).filter(n__gt=1)
    )
    for group in groups:
        rows = Participant.objects.filter(
            experiment_id=group["experiment_id"], source=group["source"], worker_id=group["worker_id"]).order_by("pk")
        for row in list(rows)[1:]:
            row.analyse_reasons = list(row.analyse_reasons) + [f"second entry of worker {row.worker_id} (set apart by migration 0004)"]
            row.worker_id = f"{row.worker_id}~duplicate-{row.pk}"
            row.analyse_ok = False
            row.save(update_fields=["worker_id", "analyse_ok", "analyse_reasons"])
    if schema_editor.connection.vendor == "postgresql":
        # the updates leave deferred foreign-key checks pending, and PostgreSQL builds no index while they are
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


class Migration(migrations.Migration):

    dependencies = [
        ('evaluation', '0003_stimuli_plural'),
    ]

    operations = [
        migrations.AddField(
            model_name='assignment',
            name='clip_ms',
            field=models.PositiveIntegerField(blank=True, help_text="The clip's duration, measured when it was served.", null=True),
        ),
        migrations.AddField(
            model_name='assignment',
            name='first_played_at',
            field=models.DateTimeField(blank=True, help_text='When the clip was first fetched from byte 0.', null=True),
        ),
        migrations.AddField(
            model_name='assignment',
            name='play_served_to',
            field=models.BigIntegerField(default=-1, help_text='Last byte served contiguously from byte 0 in the current play (-1: none).'),
        ),
        migrations.AddField(
            model_name='assignment',
            name='served_full_at',
            field=models.DateTimeField(blank=True, help_text='When every byte of the clip was first served within one play.', null=True),
        ),
        migrations.AddField(
            model_name='participant',
            name='preview',
            field=models.BooleanField(default=False, help_text='Staff trying the study: answers are never stored, counted or analysed.'),
        ),
        migrations.AlterField(
            model_name='assignment',
            name='play_count',
            field=models.PositiveIntegerField(default=0, help_text='Plays: fetches from byte 0, and ranges that do not continue the current play.'),
        ),
        migrations.AlterField(
            model_name='participant',
            name='step',
            field=models.CharField(choices=[('consent', 'Consent'), ('instructions', 'Instructions'), ('headphones', 'Headphone screen'), ('trials', 'Trials'), ('done', 'Finished'), ('screened', 'Screened out (headphones)')], default='consent', max_length=20),
        ),
        migrations.RunPython(settle_old_rows, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name='participant',
            constraint=models.UniqueConstraint(condition=models.Q(('worker_id', ''), _negated=True), fields=('experiment', 'source', 'worker_id'), name='one_participant_per_worker'),
        ),
    ]
