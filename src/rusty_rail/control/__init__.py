"""Control core: desired state to tables to the data plane; backend states."""
