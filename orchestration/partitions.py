"""Partitions: one dynamic partition per drug plate, one per registered data set."""

import dagster as dg

plates_partitions = dg.DynamicPartitionsDefinition(name="plates")
datasets_partitions = dg.DynamicPartitionsDefinition(name="datasets")
