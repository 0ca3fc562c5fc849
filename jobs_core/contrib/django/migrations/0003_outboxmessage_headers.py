from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs_core", "0002_steprecord")]

    operations = [
        migrations.AddField(
            model_name="outboxmessage",
            name="headers",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
