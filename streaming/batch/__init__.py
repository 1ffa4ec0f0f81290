"""The batch side's code outside dbt: the fraud verdicts step and how dbt is invoked."""
