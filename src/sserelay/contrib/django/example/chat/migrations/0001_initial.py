"""The chat's one table: messages, by room."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = [("sserelay", "0001_durable_schema")]

    operations = [
        migrations.CreateModel(
            name="Message",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("room", models.CharField(db_index=True, max_length=40)),
                ("user", models.CharField(max_length=40)),
                ("text", models.CharField(max_length=500)),
                ("created", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["id"]},
        ),
    ]
