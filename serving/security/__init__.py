"""Access control: who may call which model."""
