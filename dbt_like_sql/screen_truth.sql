-- The planted effect and strength of every structure x drug x concentration of a screen (synthetic screens;
-- averaged over the screen's replicate plates; structure_name '' where the truth is the same for every structure).
select p.screen_id, coalesce(t.structure_name, '') as structure_name, t.drug, t.concentration,
    any_value(t.planted_effect) as planted_effect, avg(t.strength) as strength
from drug_truth as t
join plates as p on p.plate_id = t.plate_id
group by all
