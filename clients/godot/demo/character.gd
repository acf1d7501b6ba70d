extends Node2D
## A demo character: a colored disc with its name, its region (as the region subscriptions see it) and its coins.
## Replicated by its ClusterSynchronizer ("Sync"): position (always, 20 Hz, interpolated on the other instances),
## display_name and color (on change, spawn). The owning instance walks it (main.gd).

@export var display_name: String = ""
@export var color: Color = Color.WHITE
## Shown under the name; set by main.gd from the region subscriptions and the coin audits.
var region: String = "?"
var coins: int = -1
var owned: bool = false


func _process(_delta: float) -> void:
	queue_redraw()


func _draw() -> void:
	draw_circle(Vector2.ZERO, 16.0, color)
	draw_arc(Vector2.ZERO, 16.0, 0.0, TAU, 32, Color.WHITE if owned else Color(0, 0, 0, 0.8), 3.0 if owned else 2.0)
	var font := ThemeDB.fallback_font
	draw_string(font, Vector2(-60, -24), display_name, HORIZONTAL_ALIGNMENT_CENTER, 120, 15, Color.WHITE)
	var info := "%s · %s" % [region, "?" if coins < 0 else "%d¢" % coins]
	draw_string(font, Vector2(-60, 32), info, HORIZONTAL_ALIGNMENT_CENTER, 120, 12, Color(0.85, 0.85, 0.85))
