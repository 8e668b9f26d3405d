-- The planted effect and strength of every drug x concentration of a screen (synthetic screens; averaged
-- over the screen's replicate plates).
select p.screen_id, t.drug, t.concentration, any_value(t.planted_effect) as planted_effect,
    avg(t.strength) as strength
from drug_truth as t
join plates as p on p.plate_id = t.plate_id
group by all
