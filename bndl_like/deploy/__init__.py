"""Running a cluster: worker daemons, the supervisor, status and shell."""
