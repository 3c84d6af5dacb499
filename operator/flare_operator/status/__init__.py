"""Pure status: observed state -> phase + conditions. The one place status is computed."""
