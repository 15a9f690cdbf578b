// LoRA Trainer tab: progress bar through the WebUI's own requestProgress, a live loss plot,
// and a refresh of the Lora cards when training ends.
function lora_trainer_start() {
    var id = randomId();
    var points = [];
    var box = gradioApp().getElementById('lt_loss_plot');
    // gradio 3.41 gives an HTML's elem_id to its block and to the inner div: clear only our old result,
    // never the block's innerHTML (that drops the node gradio renders later results into)
    gradioApp().querySelectorAll('#lt_result .lt-result').forEach(function(el) { el.remove(); });
    requestProgress(id, gradioApp().getElementById('lt_progress'), null, function() {
        ['txt2img', 'img2img'].forEach(function(tab) {
            var refresh = gradioApp().getElementById(tab + '_lora_extra_refresh_internal');
            if (refresh) refresh.dispatchEvent(new Event('click'));
        });
    }, function(progress) {
        var text = progress.textinfo || '';
        gradioApp().getElementById('lt_progress').setAttribute('data-textinfo', text);
        var m = /step (\d+)\/(\d+).*loss ([0-9.eE+-]+)/.exec(text);
        if (m) {
            var step = parseInt(m[1]), loss = parseFloat(m[3]);
            if (!points.length || points[points.length - 1][0] !== step) points.push([step, loss]);
            lora_trainer_draw(box, points, parseInt(m[2]));
        }
    });
    var res = Array.from(arguments);
    res[0] = id;
    return res;
}

function lora_trainer_draw(box, points, total) {
    if (!box) return;
    var svg = box.querySelector('svg'), label = box.querySelector('.lt-loss-label');
    var losses = points.map(function(p) { return p[1]; });
    var lo = Math.min.apply(null, losses), hi = Math.max.apply(null, losses);
    if (hi === lo) hi = lo + 1e-6;
    var path = points.map(function(p, i) {
        var x = 400 * p[0] / Math.max(total, 1), y = 115 - 110 * (p[1] - lo) / (hi - lo);
        return (i ? 'L' : 'M') + x.toFixed(1) + ',' + y.toFixed(1);
    }).join(' ');
    svg.innerHTML = '<path d="' + path + '" fill="none" stroke="currentColor" stroke-width="1.5"/>';
    label.textContent = 'loss ' + losses[losses.length - 1].toFixed(4) + ' (min ' + lo.toFixed(4) + ', max ' + hi.toFixed(4) + ')';
}

// "Use in the Train tab": switch our inner tabs to Train; the folder is passed through unchanged.
function lora_trainer_show_train(dir, regDir) {
    const buttons = gradioApp().querySelectorAll('#lt_subtabs > .tab-nav > button');
    const train = Array.from(buttons).find(b => b.innerText.trim() === 'Train');
    if (train) train.click();
    return [dir, regDir];
}
