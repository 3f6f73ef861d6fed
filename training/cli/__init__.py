"""click only: parse the options, call one function of steps/serving/evaluation, print. Nothing in training imports it."""
