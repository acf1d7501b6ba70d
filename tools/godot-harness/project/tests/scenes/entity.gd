extends Node2D
## A benchmark entity: position, the tick that moved it and that tick's send time (ms on the browser's shared clock).

@export var tick: int = 0
@export var sent_ms: float = 0.0
