from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs_core", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="StepRecord",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("run_id", models.CharField(max_length=64)),
                ("key", models.CharField(max_length=255)),
                ("value", models.TextField()),
                ("expires_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "step record",
                "db_table": "jobs_steps",
                "indexes": [models.Index(fields=["expires_at"], name="jobs_steps_expires_idx")],
                "constraints": [
                    models.UniqueConstraint(fields=("run_id", "key"), name="jobs_steps_run_key")
                ],
            },
        ),
    ]
