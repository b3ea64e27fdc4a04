from alembic import context

from aiplus.storage.tables import metadata
from aiplus.storage.watchdog import patient

engine = context.config.attributes["engine"]
with engine.begin() as connection, patient(connection):
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL statement_timeout = 0")  # a migration may rewrite a big table
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
