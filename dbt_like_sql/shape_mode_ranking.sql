-- Treatments ranked by how far their shape-mode profile (mean IDEC soft assignment) lies from DMSO's (KL
-- divergence), per screen, next to the planted effect (synthetic screens).
select
    screen_id,
    drug,
    concentration,
    coalesce(planted_effect, 'unknown') as planted_effect,
    round(strength, 3) as strength,
    round(kl_from_dmso, 5) as kl_from_dmso,
    rank() over (partition by screen_id order by kl_from_dmso desc) as kl_rank,
    n_cells,
    k
from mode_kl
order by screen_id, kl_rank
