"""The libraries the stages share: the typed config, data reading and demos, weak sources (rules,
labelling functions), modelling, pools, tracking, the stage decorator. No module here is a stage."""
