"""Partitions: one dynamic partition per drug plate."""

import dagster as dg

plates_partitions = dg.DynamicPartitionsDefinition(name="plates")
