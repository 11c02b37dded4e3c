"""``created`` defaults to ``now()`` in the database too, so that a message inserted by
another client than Django (``psql``, with ``CHAT_CAPTURE=1``) needs only room, user and
text. Django sets it itself (``auto_now_add``)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("chat", "0001_initial")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE chat_message ALTER COLUMN created SET DEFAULT now()",
            "ALTER TABLE chat_message ALTER COLUMN created DROP DEFAULT",
        )
    ]
