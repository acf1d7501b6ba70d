extends Node2D
## The test scene's root: replicated by its ClusterSynchronizer (position always, hp and seq on change).

@export var hp: int = 100
@export var seq: int = 0
